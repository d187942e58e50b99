//! Writing the connection's queue from its own task: on plain TCP the
//! same direct `sendmsg` the shard's flush uses, then waiting for
//! writability through the reactor when the socket is full; under TLS, the
//! frames through the record layer as one vectored write, then its records
//! to the socket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::AsyncWrite;

use super::{Conn, Transport};
use crate::peer::send::{flush_direct, wrote, Flushed, MAX_IOVECS};

impl Conn {
    /// Writes as much of the outbox as the transport takes. Ready(Ok) when
    /// the outbox is empty (and, under TLS, its records are on the socket).
    pub(super) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream {
            Transport::Plain(_) => self.poll_flush_plain(cx),
            Transport::Tls(_) => self.poll_flush_tls(cx),
        }
    }

    /// TLS: the queued frames go through the record layer as one vectored
    /// write (rustls encrypts them into its bounded send buffer), then the
    /// records are flushed to the socket.
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let written = {
                let out = self.peer.outbox();
                if out.is_empty() {
                    None
                } else {
                    let mut batch = [io::IoSlice::new(&[]); MAX_IOVECS];
                    let mut n = 0;
                    for slice in out.slices(MAX_IOVECS) {
                        batch[n] = io::IoSlice::new(slice);
                        n += 1;
                    }
                    Some(Pin::new(&mut self.stream).poll_write_vectored(cx, &batch[..n]))
                }
            };
            match written {
                None => return Pin::new(&mut self.stream).poll_flush(cx),
                Some(Poll::Ready(Ok(0))) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Some(Poll::Ready(Ok(n))) => wrote(&mut self.peer.outbox(), n, self.shard.stats()),
                Some(Poll::Ready(Err(e))) => return Poll::Ready(Err(e)),
                Some(Poll::Pending) => return Poll::Pending,
            }
        }
    }

    /// Plain TCP: what [`flush_direct`] cannot send now waits for
    /// writability (the socket's next event in the shard's readiness set).
    fn poll_flush_plain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shard = self.shard.clone();
        loop {
            let flushed = flush_direct(&mut self.peer.outbox(), self.stream.raw_fd(), &mut shard.write_scratch.borrow_mut(), shard.stats());
            match flushed? {
                Flushed::All => return Poll::Ready(Ok(())),
                Flushed::WouldBlock => {
                    // The socket's poll_write retries the send and, when the
                    // buffer is still full, waits for its next event.
                    let head = self.peer.outbox().head().expect("outbox not empty");
                    match Pin::new(&mut self.stream).poll_write(cx, &head) {
                        Poll::Ready(Ok(n)) => wrote(&mut self.peer.outbox(), n, shard.stats()),
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
        }
    }
}
