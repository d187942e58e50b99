//! A real HTTP backend for the hooks' and webhooks' tests: axum on its
//! own port and runtime, recording every call and answering as the test
//! says.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// What the test backend answers: a JSON body with 200, a bare status, an
/// answer after a delay, or a raw 200 body.
#[derive(Clone)]
pub enum Reply {
    Json(Value),
    Status(u16),
    After(Duration, Value),
    Raw(&'static str),
}

/// One call the backend received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Value,
    /// The body as sent (a webhook's signature covers these bytes).
    pub raw: Bytes,
}

type Answer = dyn Fn(&str, &Value) -> Reply + std::marker::Send + Sync;

/// The backend's handler state: the calls seen, and how to answer.
type Shared = (Arc<Mutex<Vec<Seen>>>, Arc<Answer>);

/// An HTTP backend on 127.0.0.1 that records every call and answers with
/// `answer(path, body)`. Stops with the test.
pub struct Backend {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    tls: bool,
    _runtime: tokio::runtime::Runtime,
}

impl Backend {
    pub fn start(answer: impl Fn(&str, &Value) -> Reply + std::marker::Send + Sync + 'static) -> Backend {
        Backend::start_on(0, answer)
    }

    /// On loopback port `port` (0: any free one).
    pub fn start_on(port: u16, answer: impl Fn(&str, &Value) -> Reply + std::marker::Send + Sync + 'static) -> Backend {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let answer: Arc<Answer> = Arc::new(answer);
        let listener = runtime.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port))).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = (seen.clone(), answer);
        let app = axum::Router::new().fallback(handle).with_state(state);
        runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
        Backend { addr, seen, tls: false, _runtime: runtime }
    }

    /// The same backend over HTTPS with `cert` and `key` (PEM); its
    /// [`Backend::url`]s are then `https://`.
    pub fn start_tls(cert: &str, key: &str, answer: impl Fn(&str, &Value) -> Reply + std::marker::Send + Sync + 'static) -> Backend {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let answer: Arc<Answer> = Arc::new(answer);
        let listener = runtime.block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0))).unwrap();
        let addr = listener.local_addr().unwrap();
        let certs = CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let app = axum::Router::new().fallback(handle).with_state((seen.clone(), answer));
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tls), service).await;
                });
            }
        });
        Backend { addr, seen, tls: true, _runtime: runtime }
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    pub fn calls(&self, path: &str) -> Vec<Seen> {
        self.seen.lock().unwrap().iter().filter(|s| s.path == path).cloned().collect()
    }
}

async fn handle(axum::extract::State((seen, answer)): axum::extract::State<Shared>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let raw = body;
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
    let path = uri.path().to_string();
    seen.lock().unwrap().push(Seen { path: path.clone(), headers, body: body.clone(), raw });
    match answer(&path, &body) {
        Reply::Json(v) => axum::Json(v).into_response(),
        Reply::Status(s) => StatusCode::from_u16(s).unwrap().into_response(),
        Reply::After(wait, v) => {
            tokio::time::sleep(wait).await;
            axum::Json(v).into_response()
        }
        Reply::Raw(text) => text.into_response(),
    }
}

