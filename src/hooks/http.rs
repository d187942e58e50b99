//! The hooks' HTTP client: hyper's pooled HTTP/1.1 client with rustls for
//! `https://`, keep-alive connections reused across calls, every answer
//! read up to a size bound and every call cut at a deadline.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Idle keep-alive connections are closed after this.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// Why a POST got no answer to judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostError {
    /// No complete answer within the deadline.
    Timeout,
    /// Connecting, TLS, or the exchange failed.
    Transport,
    /// The answer's body was longer than allowed.
    TooLong,
}

/// A status and the whole body of an answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// One client per thread that calls out (the hooks thread).
#[derive(Clone, Debug)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Sent on every request (`[proxy] static_headers`).
    headers: Arc<[(HeaderName, HeaderValue)]>,
    max_body: usize,
}

impl HttpClient {
    /// `tls`: the roots for `https://` (`None`: the public ones);
    /// `headers`: name/value pairs already validated by the config.
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>, headers: &[(String, String)], max_body: usize) -> Result<HttpClient, String> {
        let tls = match tls {
            Some(tls) => tls,
            None => crate::tls::client_config(None)?,
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(POOL_IDLE).pool_timer(TokioTimer::new()).build(connector);
        let headers = headers
            .iter()
            .map(|(name, value)| {
                let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("header {name}: {e}"))?;
                let value = HeaderValue::from_str(value).map_err(|e| format!("header {name}: {e}"))?;
                Ok((name, value))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(HttpClient { client, headers: headers.into(), max_body })
    }

    /// POSTs `body` (JSON) to `url` with the static headers and `extra`,
    /// and reads the whole answer, all within `timeout`.
    pub async fn post_json(&self, url: &url::Url, extra: &[(HeaderName, HeaderValue)], body: Bytes, timeout: Duration) -> Result<Answer, PostError> {
        let mut request = Request::builder().method(Method::POST).uri(url.as_str()).header(CONTENT_TYPE, "application/json");
        for (name, value) in self.headers.iter().chain(extra) {
            request = request.header(name, value);
        }
        let request = request.body(Full::new(body)).map_err(|_| PostError::Transport)?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|_| PostError::Transport)?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), self.max_body).collect().await.map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    PostError::TooLong
                } else {
                    PostError::Transport
                }
            })?;
            Ok(Answer { status, body: body.to_bytes() })
        };
        tokio::time::timeout(timeout, exchange).await.unwrap_or(Err(PostError::Timeout))
    }
}
