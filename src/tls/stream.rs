//! [`MaybeTls`]: a TCP stream, plain or under TLS, read and written the
//! same way either way. The connection task's transport is one (server
//! side, over a `readiness::Socket`), and so is the bridge's connection to
//! Redis (client side, over a glommio stream). The TLS state is boxed: it
//! is large, and a plain stream should not pay for it.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};

/// Plain TCP (`S`), or TLS over it (`T`: a rustls stream over an `S`).
pub enum MaybeTls<S, T> {
    Plain(S),
    Tls(Box<T>),
}

/// A TLS stream over a TCP stream `S` (server or client side).
pub trait Over<S>: AsyncRead + AsyncWrite + Unpin {
    fn tcp(&self) -> &S;

    /// Sends close_notify if it can go now, without waiting.
    fn close_notify_now(&mut self) {}
}

impl<S: AsyncRead + AsyncWrite + Unpin> Over<S> for super::ServerStream<S> {
    fn tcp(&self) -> &S {
        self.get_ref()
    }

    fn close_notify_now(&mut self) {
        super::ServerStream::close_notify_now(self);
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Over<S> for futures_rustls::client::TlsStream<S> {
    fn tcp(&self) -> &S {
        self.get_ref().0
    }
}

/// Reads and writes, whichever the stream is.
trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<X: AsyncRead + AsyncWrite + Unpin> Io for X {}

impl<S: AsyncRead + AsyncWrite + Unpin + AsRawFd, T: Over<S>> MaybeTls<S, T> {
    /// The TCP stream under it.
    pub fn tcp(&self) -> &S {
        match self {
            MaybeTls::Plain(s) => s,
            MaybeTls::Tls(s) => s.tcp(),
        }
    }

    /// Under TLS, tells the peer the stream ends here (close_notify), if
    /// that can be sent without waiting; a connection that is ending calls
    /// it before it shuts its socket down.
    pub fn close_notify_now(&mut self) {
        if let MaybeTls::Tls(s) = self {
            s.close_notify_now();
        }
    }

    /// The socket under the stream (for `sendmsg`, `shutdown`).
    pub fn raw_fd(&self) -> RawFd {
        self.tcp().as_raw_fd()
    }

    /// The peer's address, `None` once the connection is gone.
    pub fn peer_ip(&self) -> Option<std::net::IpAddr> {
        // SAFETY: the descriptor is open while `self` lives, longer than the borrow.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.raw_fd()) };
        socket2::SockRef::from(&fd).peer_addr().ok()?.as_socket().map(|a| a.ip())
    }

    fn io(self: Pin<&mut Self>) -> Pin<&mut dyn Io> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + AsRawFd, T: Over<S>> AsyncRead for MaybeTls<S, T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.io().poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + AsRawFd, T: Over<S>> AsyncWrite for MaybeTls<S, T> {
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
