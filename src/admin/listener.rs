//! The admin listener's connections: at most `[admin] max_connections`
//! open (past that, new ones wait in the accept backlog), each served as
//! HTTP/1 by hyper with a header-read timeout (`[admin] header_timeout_ms`),
//! so a client that sends its headers slowly, or idles between requests,
//! cannot hold a slot for ever. Runs on the admin thread.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// Pause after a failed accept (e.g. out of descriptors), so it does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` for ever.
pub async fn serve(listener: TcpListener, router: Router, max_connections: usize, header_timeout: Duration) {
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let slot = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!("admin accept failed: {e}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!("admin connection ended: {e}");
            }
            // The connection's place among max_connections is free again.
            drop(slot);
        });
    }
}
