//! Sockets in a shard's readiness set: [`Socket`], a connected TCP socket
//! read and written with plain non-blocking syscalls (futures' `AsyncRead`
//! and `AsyncWrite`, so rustls runs over it as over any stream), and
//! [`Listener`], which accepts with `accept4(SOCK_NONBLOCK)`: no `fcntl`,
//! no poll armed per read, one registration per socket for its whole life.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};

use super::{cvt, Readiness, Token};

/// A connected, non-blocking TCP socket of this shard.
pub struct Socket {
    fd: OwnedFd,
    token: Token,
    readiness: Rc<Readiness>,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket").field("fd", &self.fd.as_raw_fd()).finish_non_exhaustive()
    }
}

impl Socket {
    /// Takes `fd` (a connected, non-blocking TCP socket) into `readiness`.
    fn new(fd: OwnedFd, readiness: &Rc<Readiness>) -> io::Result<Socket> {
        let token = readiness.register(fd.as_raw_fd())?;
        Ok(Socket { fd, token, readiness: readiness.clone() })
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // The descriptor closes after this, which takes it out of the set.
        self.readiness.forget(self.token);
    }
}

/// The result of a non-blocking syscall: `Pending` (with the waker kept
/// for the socket's next event) when it would block.
fn or_wait<T>(socket: &Socket, cx: &Context<'_>, result: io::Result<T>) -> Poll<io::Result<T>> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            socket.readiness.wait(socket.token, cx.waker());
            Poll::Pending
        }
        other => Poll::Ready(other),
    }
}

/// `sendmsg(MSG_DONTWAIT | MSG_NOSIGNAL)` of several buffers on `fd`: a
/// socket's vectored write, and the shard's flush writing past the socket
/// (`peer::send`).
pub fn send_vectored(fd: RawFd, bufs: &[libc::iovec]) -> io::Result<usize> {
    // SAFETY: every iovec points into memory the caller keeps alive for the
    // call; msghdr is zeroed but for the iovec array.
    let n = cvt(unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = bufs.len() as _;
        libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    })?;
    Ok(n as usize)
}

impl AsyncRead for Socket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if !this.readiness.readable(this.token) {
                // Empty since its last event: no syscall until the next one.
                this.readiness.wait(this.token, cx.waker());
                return Poll::Pending;
            }
            // SAFETY: buf is valid for buf.len() bytes; the fd is open.
            let n = cvt(unsafe { libc::recv(this.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) }).map(|n| n as usize);
            match n {
                // Less than asked: the socket is empty now (a later arrival
                // is a new edge). Nothing (EOF) is returned as it is.
                Ok(n) if n > 0 && n < buf.len() => {
                    this.readiness.drained(this.token);
                    return Poll::Ready(Ok(n));
                }
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => this.readiness.drained(this.token),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // Always tried: sends from the shard's flush bypass this socket, so
        // only the kernel knows whether there is room.
        // SAFETY: buf is valid for buf.len() bytes; the fd is open.
        let n = cvt(unsafe { libc::send(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) }).map(|n| n as usize);
        or_wait(&self, cx, n)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        // SAFETY: IoSlice is ABI-compatible with iovec on Unix.
        let iovecs = unsafe { std::slice::from_raw_parts(bufs.as_ptr().cast::<libc::iovec>(), bufs.len()) };
        or_wait(&self, cx, send_vectored(self.fd.as_raw_fd(), iovecs))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // SAFETY: shutdown(2) on our open socket.
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_WR) };
        Poll::Ready(Ok(()))
    }
}

/// A listening socket of this shard (its `SO_REUSEPORT` listener).
pub struct Listener {
    socket: Socket,
}

impl Listener {
    /// Takes a bound, listening socket into `readiness`.
    pub fn new(listener: socket2::Socket, readiness: &Rc<Readiness>) -> io::Result<Listener> {
        listener.set_nonblocking(true)?;
        // SAFETY: the socket's descriptor moves into the OwnedFd.
        let fd = unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(listener)) };
        Ok(Listener { socket: Socket::new(fd, readiness)? })
    }

    /// Accepts one connection (non-blocking, close-on-exec, registered),
    /// waiting for one when there is none.
    pub fn poll_accept(&self, cx: &Context<'_>) -> Poll<io::Result<Socket>> {
        let socket = &self.socket;
        loop {
            // SAFETY: accept4 with null address arguments on our listening socket.
            let fd = unsafe { libc::accept4(socket.fd.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) };
            if fd >= 0 {
                // SAFETY: fd is a new descriptor we own.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                return Poll::Ready(Socket::new(fd, &socket.readiness));
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                // A connection reset while queued: the next one.
                _ if err.raw_os_error() == Some(libc::ECONNABORTED) => continue,
                _ => return or_wait(socket, cx, Err(err)),
            }
        }
    }

    /// Accepts one connection, waiting for one when there is none.
    pub async fn accept(&self) -> io::Result<Socket> {
        futures_lite::future::poll_fn(|cx| self.poll_accept(cx)).await
    }
}
