//! The application backend of the hook benches (`handshakes`,
//! `publish-proxy`, `webhooks`): an HTTP/1.1 server (axum) on 127.0.0.1,
//! in this process, answering what shardcast's `[proxy]` and `[webhooks]`
//! send it:
//!
//! - `POST /connect` → `{"result":{"user":"u<n>"}}`, n counting up from 0;
//! - `POST /publish` → `{"result":{}}` (deliver the payload as it is);
//! - `POST /webhooks` → 200, empty; the body's `events` are counted.
//!
//! It runs on a thread of its own (`bench-backend`) with a single-threaded
//! tokio runtime, so its CPU is one thread's and is measured apart: every
//! report of a run made while it is up carries `backend_cpu_seconds`, and
//! the generator's CPU is the process's minus the backend's. The thread
//! inherits the bench's CPU affinity (run the bench under `taskset -c 1`
//! and the server under `taskset -c 0`: the backend is then on the
//! generator's core, never the server's), or is pinned to `--backend-cpu`.
//! One backend per process; a comparison starts it once for all its rounds.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::body::Bytes;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// The thread's name, as `/proc/self/task/*/comm` shows it.
pub const THREAD: &str = "bench-backend";

/// What the backend has answered so far (process-wide: one backend).
struct Counters {
    running: AtomicBool,
    connect: AtomicU64,
    publish: AtomicU64,
    webhook_posts: AtomicU64,
    webhook_events: AtomicU64,
    /// Anything else: another path, or a webhook body without `events`.
    other: AtomicU64,
}

static COUNTERS: Counters = Counters {
    running: AtomicBool::new(false),
    connect: AtomicU64::new(0),
    publish: AtomicU64::new(0),
    webhook_posts: AtomicU64::new(0),
    webhook_events: AtomicU64::new(0),
    other: AtomicU64::new(0),
};

/// The backend's counters and CPU at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub cpu_seconds: Option<f64>,
    pub connect: u64,
    pub publish: u64,
    pub webhook_posts: u64,
    pub webhook_events: u64,
    pub other: u64,
}

impl Snapshot {
    /// Now, when a backend runs in this process.
    pub fn take() -> Option<Snapshot> {
        let c = &COUNTERS;
        c.running.load(Ordering::Relaxed).then(|| Snapshot {
            cpu_seconds: crate::proc::thread_cpu_seconds(std::process::id(), THREAD),
            connect: c.connect.load(Ordering::Relaxed),
            publish: c.publish.load(Ordering::Relaxed),
            webhook_posts: c.webhook_posts.load(Ordering::Relaxed),
            webhook_events: c.webhook_events.load(Ordering::Relaxed),
            other: c.other.load(Ordering::Relaxed),
        })
    }

    /// The report details of what happened between `self` and `after`.
    pub fn details(&self, after: &Snapshot) -> Vec<(String, f64)> {
        let mut v = vec![
            ("backend_connect_calls".to_string(), (after.connect - self.connect) as f64),
            ("backend_publish_calls".to_string(), (after.publish - self.publish) as f64),
            ("webhook_posts".to_string(), (after.webhook_posts - self.webhook_posts) as f64),
            ("webhook_events".to_string(), (after.webhook_events - self.webhook_events) as f64),
            ("backend_other_calls".to_string(), (after.other - self.other) as f64),
        ];
        if let Some(cpu) = self.cpu_delta(after) {
            v.push(("backend_cpu_seconds".to_string(), (cpu * 1000.0).round() / 1000.0));
        }
        v
    }

    pub fn cpu_delta(&self, after: &Snapshot) -> Option<f64> {
        Some(after.cpu_seconds? - self.cpu_seconds?)
    }
}

/// The running backend; stopped when dropped.
pub struct Backend {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    /// Binds 127.0.0.1:0 and serves on the `bench-backend` thread (pinned to
    /// `cpu` when given).
    pub fn start(cpu: Option<usize>) -> Result<Backend, String> {
        if COUNTERS.running.swap(true, Ordering::Relaxed) {
            return Err("one backend per process".into());
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("backend: {e}"))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(THREAD.into())
            .spawn(move || {
                if let Some(cpu) = cpu {
                    shardcast::affinity::pin_current_thread(cpu, "bench backend");
                }
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("backend runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("backend listener");
                    let app = axum::Router::new().fallback(answer);
                    tokio::select! {
                        r = axum::serve(listener, app) => if let Err(e) = r { eprintln!("backend: {e}") },
                        _ = stopped => {}
                    }
                });
            })
            .map_err(|e| e.to_string())?;
        Ok(Backend { addr, stop: Some(stop), thread: Some(thread) })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        COUNTERS.running.store(false, Ordering::Relaxed);
    }
}

/// The count of a webhook body's `events`, when it has them.
fn events_in(body: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Batch {
        #[allow(dead_code)]
        time_ms: u64,
        events: Vec<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Batch>(body).ok().map(|b| b.events.len() as u64)
}

fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn answer(uri: Uri, body: Bytes) -> Response {
    let c = &COUNTERS;
    match uri.path() {
        "/connect" => {
            let n = c.connect.fetch_add(1, Ordering::Relaxed);
            json(format!(r#"{{"result":{{"user":"u{n}"}}}}"#))
        }
        "/publish" => {
            c.publish.fetch_add(1, Ordering::Relaxed);
            json(r#"{"result":{}}"#.to_string())
        }
        "/webhooks" => match events_in(&body) {
            Some(n) => {
                c.webhook_posts.fetch_add(1, Ordering::Relaxed);
                c.webhook_events.fetch_add(n, Ordering::Relaxed);
                StatusCode::OK.into_response()
            }
            None => {
                c.other.fetch_add(1, Ordering::Relaxed);
                StatusCode::BAD_REQUEST.into_response()
            }
        },
        _ => {
            c.other.fetch_add(1, Ordering::Relaxed);
            StatusCode::NOT_FOUND.into_response()
        }
    }
}
