//! [`MaybeTls`]: a TCP stream, plain or under TLS, read and written the
//! same way either way. The connection task's transport is one (server
//! side), and so is the bridge's connection to Redis (client side). The TLS
//! state is boxed: it is large, and a plain stream should not pay for it.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

/// Plain TCP, or TLS (`T`: a rustls stream over the same TCP stream).
pub enum MaybeTls<T> {
    Plain(TcpStream),
    Tls(Box<T>),
}

/// A TLS stream over a glommio TCP stream (server or client side).
pub trait OverTcp: AsyncRead + AsyncWrite + Unpin {
    fn tcp(&self) -> &TcpStream;
}

impl OverTcp for futures_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

impl OverTcp for futures_rustls::client::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Reads and writes, whichever the stream is.
trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<X: AsyncRead + AsyncWrite + Unpin> Io for X {}

impl<T: OverTcp> MaybeTls<T> {
    /// The TCP stream under it.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            MaybeTls::Plain(s) => s,
            MaybeTls::Tls(s) => s.tcp(),
        }
    }

    /// The socket under the stream (for `sendmsg`, `shutdown`).
    pub fn raw_fd(&self) -> RawFd {
        self.tcp().as_raw_fd()
    }

    /// The peer's address, `None` once the connection is gone.
    pub fn peer_ip(&self) -> Option<std::net::IpAddr> {
        self.tcp().peer_addr().ok().map(|a| a.ip())
    }

    fn io(self: Pin<&mut Self>) -> Pin<&mut dyn Io> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()),
        }
    }
}

impl<T: OverTcp> AsyncRead for MaybeTls<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.io().poll_read(cx, buf)
    }
}

impl<T: OverTcp> AsyncWrite for MaybeTls<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.io().poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.io().poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_close(cx)
    }
}
