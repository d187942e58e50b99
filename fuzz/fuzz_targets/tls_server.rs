//! The server's TLS (`tls::ServerStream`) on arbitrary bytes from a client:
//! the handshake driver, the records after it and the alerts it answers
//! with, the input handed over in pieces of a size the input chooses.
#![no_main]

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite};
use libfuzzer_sys::fuzz_target;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;
use shardcast::tls::ServerStream;

/// The client's bytes, `chunk` at a time, then EOF; what the server writes is dropped.
struct Pipe<'a> {
    input: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Pipe<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let n = self.input.len().min(self.chunk).min(buf.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Pipe<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn config() -> Arc<ServerConfig> {
    static CONFIG: OnceLock<Arc<ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
            let cert = CertificateDer::from(made.cert.der().to_vec());
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let config = ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
                .unwrap();
            Arc::new(config)
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else { return };
    let pipe = Pipe { input, chunk: usize::from(chunk) % 64 + 1 };
    futures_lite::future::block_on(async {
        // A handshake from these bytes alone cannot finish (the client's
        // Finished needs the server's random), but every step before is reached.
        if let Ok(mut tls) = ServerStream::accept(config(), pipe).await {
            let mut buf = [0; 1024];
            while let Ok(1..) = tls.read(&mut buf).await {}
            tls.close_notify_now();
        }
    });
});
