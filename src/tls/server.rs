//! [`ServerStream`]: the server side of TLS over a client's socket, with
//! rustls' unbuffered API, so that an idle connection holds no buffer.
//!
//! Ciphertext is read into the thread's receive buffer (one per shard, as
//! each shard is one thread) and decrypted from there; outgoing plaintext is
//! gathered and encrypted into the thread's send buffer and sent from there.
//! A connection keeps bytes of its own only while they are in flight: a
//! record received in part, records the socket did not take yet, or
//! plaintext the reader's buffer had no room for. Each is freed once empty.
//! What is left per connection is rustls' state (the record keys and the
//! protocol state).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use rustls::server::{ServerConfig, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};

/// Ciphertext read per `recv`: several whole records (a record is at most
/// 16 KiB of plaintext plus 256 bytes and its 5-byte header), and more than
/// the largest handshake message rustls takes (64 KiB) with its records'
/// headers, so that what the handshake leaves unprocessed always fits.
const RECEIVE_BYTES: usize = 72 * 1024;
/// Plaintext encrypted per write: four full records.
const SEND_PLAINTEXT_BYTES: usize = 4 * 16 * 1024;
/// Their ciphertext: each record adds at most 29 bytes (TLS 1.2 AES-GCM),
/// and a key update may go first.
const SEND_CIPHERTEXT_BYTES: usize = SEND_PLAINTEXT_BYTES + 1024;
/// Room for a close_notify record.
const CLOSE_NOTIFY_BYTES: usize = 64;

/// The thread's buffers, shared by its connections one call at a time.
struct Scratch {
    /// Ciphertext being read and decrypted.
    receive: Box<[u8]>,
    /// Plaintext gathered for one encryption.
    plaintext: Vec<u8>,
    /// The records it became (all of it is writable room).
    ciphertext: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// Runs `f` with the thread's buffers, allocated on first use.
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut cell = cell.borrow_mut();
        let scratch = cell.get_or_insert_with(|| Scratch {
            receive: vec![0; RECEIVE_BYTES].into_boxed_slice(),
            plaintext: Vec::with_capacity(SEND_PLAINTEXT_BYTES),
            ciphertext: vec![0; SEND_CIPHERTEXT_BYTES],
        });
        f(scratch)
    })
}

/// Where processing the received records stopped.
enum Stop {
    /// More ciphertext is needed (in the handshake, or for the next record).
    NeedInput,
    /// The reader's buffer is full; records may be left unprocessed.
    OutFull,
    /// The client sent close_notify: no more input.
    PeerClosed,
    /// Both sides have closed: nothing can be sent either.
    Closed,
    /// The requested write was encrypted: this many ciphertext bytes.
    Sealed(usize),
}

/// What to do once the connection may send application data.
enum Seal<'a> {
    /// Encrypt this plaintext into this buffer (grown if it is too small).
    Data(&'a [u8], &'a mut Vec<u8>),
    /// Encode close_notify into the connection's outgoing bytes.
    CloseNotify,
}

/// TLS (server side) over the stream `S`, after [`ServerStream::accept`].
pub struct ServerStream<S> {
    io: S,
    conn: UnbufferedServerConnection,
    /// Ciphertext received and not yet processed: a partial record, or
    /// records left when the reader's buffer was full. Usually empty, with
    /// no capacity.
    incoming: Vec<u8>,
    /// Records not yet on the socket (`outgoing[sent..]`). Usually empty.
    outgoing: Vec<u8>,
    sent: usize,
    /// Decrypted plaintext the reader had no room for (`plain[taken..]`).
    plain: Vec<u8>,
    taken: usize,
    /// The client sent close_notify, or its TCP stream ended.
    read_closed: bool,
    /// Our close_notify is queued.
    close_queued: bool,
}

fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> ServerStream<S> {
    /// Runs the server's side of the handshake over `io`.
    pub async fn accept(config: Arc<ServerConfig>, io: S) -> io::Result<ServerStream<S>> {
        let conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
        let mut stream = ServerStream {
            io,
            conn,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            sent: 0,
            plain: Vec::new(),
            taken: 0,
            read_closed: false,
            close_queued: false,
        };
        futures_lite::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
        Ok(stream)
    }

    /// The stream under TLS.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Sends close_notify if the socket takes it now: for a connection
    /// that is ending, so nothing waits for it.
    pub fn close_notify_now(&mut self) {
        let _ = Pin::new(self).poll_close(&mut Context::from_waker(std::task::Waker::noop()));
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            // Our flight goes out before we wait for the client's answer.
            ready!(self.poll_send_outgoing(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            let mut input = std::mem::take(&mut self.incoming);
            let stop = self.process(&mut input, &mut [], &mut 0, None);
            self.incoming = input;
            let stop = match stop {
                Ok(stop) => stop,
                Err(e) => {
                    // The alert, if the socket takes it now.
                    let _ = self.poll_send_outgoing(cx);
                    return Poll::Ready(Err(e));
                }
            };
            let ended = match stop {
                Stop::NeedInput if self.outgoing.is_empty() => !ready!(self.poll_receive_into_incoming(cx))?,
                Stop::PeerClosed | Stop::Closed => true,
                _ => false,
            };
            if ended {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Reads more ciphertext into `incoming` (the handshake's path; false at EOF).
    fn poll_receive_into_incoming(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        with_scratch(|scratch| {
            // Bounded so that what is left after the handshake fits the receive buffer.
            let room = RECEIVE_BYTES - self.incoming.len();
            if room == 0 {
                return Poll::Ready(Err(invalid("TLS handshake larger than the receive buffer")));
            }
            let n = ready!(Pin::new(&mut self.io).poll_read(cx, &mut scratch.receive[..room]))?;
            self.incoming.extend_from_slice(&scratch.receive[..n]);
            Poll::Ready(Ok(n > 0))
        })
    }

    /// Runs rustls over the ciphertext in `input` (processed bytes are
    /// removed from its front): handshake records are encoded into
    /// `outgoing`, application data is copied to `out[*filled..]` and, past
    /// its end, kept in `plain`. With `seal`, stops once it is done.
    fn process(&mut self, input: &mut Vec<u8>, out: &mut [u8], filled: &mut usize, seal: Option<Seal<'_>>) -> io::Result<Stop> {
        let mut used = 0;
        let stop = self.process_slice(input, &mut used, out, filled, seal);
        input.drain(..used);
        if input.is_empty() {
            *input = Vec::new();
        }
        stop
    }

    /// [`process`](Self::process) over a slice: `*used` bytes of it were processed.
    fn process_slice(&mut self, input: &mut [u8], used: &mut usize, out: &mut [u8], filled: &mut usize, mut seal: Option<Seal<'_>>) -> io::Result<Stop> {
        loop {
            let status = self.conn.process_tls_records(&mut input[*used..]);
            let discard = status.discard;
            let state = match status.state {
                Ok(state) => state,
                Err(e) => {
                    *used += discard;
                    self.queue_alert(&mut input[*used..]);
                    return Err(invalid(e));
                }
            };
            let stop = match state {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(invalid)?;
                        let fits = record.payload.len().min(out.len() - *filled);
                        out[*filled..*filled + fits].copy_from_slice(&record.payload[..fits]);
                        *filled += fits;
                        self.plain.extend_from_slice(&record.payload[fits..]);
                    }
                    (*filled == out.len()).then_some(Stop::OutFull)
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    encode(&mut self.outgoing, |buf| data.encode(buf))?;
                    None
                }
                // Encoded into `outgoing`; sending it is the writer's job.
                ConnectionState::TransmitTlsData(data) => {
                    data.done();
                    None
                }
                ConnectionState::BlockedHandshake => Some(Stop::NeedInput),
                ConnectionState::PeerClosed => {
                    self.read_closed = true;
                    Some(Stop::PeerClosed)
                }
                ConnectionState::Closed => {
                    self.read_closed = true;
                    Some(Stop::Closed)
                }
                ConnectionState::WriteTraffic(mut traffic) => Some(match seal.take() {
                    None => Stop::NeedInput,
                    Some(Seal::Data(plaintext, ciphertext)) => match traffic.encrypt(plaintext, ciphertext) {
                        Ok(n) => Stop::Sealed(n),
                        Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                            ciphertext.resize(required_size, 0);
                            Stop::Sealed(traffic.encrypt(plaintext, ciphertext).map_err(invalid)?)
                        }
                        Err(e) => return Err(invalid(e)),
                    },
                    Some(Seal::CloseNotify) => {
                        let at = self.outgoing.len();
                        self.outgoing.resize(at + CLOSE_NOTIFY_BYTES, 0);
                        let n = traffic.queue_close_notify(&mut self.outgoing[at..]).map_err(invalid)?;
                        self.outgoing.truncate(at + n);
                        Stop::Sealed(0)
                    }
                }),
                // Early data is not enabled (`max_early_data_size` is 0).
                _ => return Err(invalid("unexpected TLS state")),
            };
            *used += discard;
            if let Some(stop) = stop {
                return Ok(stop);
            }
        }
    }

    /// After a TLS error: the alert rustls queued, encoded for the socket
    /// (best effort: the connection ends anyway). `input` is what is left
    /// of the records (rustls' deframer must see the same bytes again).
    fn queue_alert(&mut self, input: &mut [u8]) {
        // Only while something is queued: a call with nothing queued would
        // read the bad records again.
        while self.conn.wants_write() {
            let Ok(ConnectionState::EncodeTlsData(mut data)) = self.conn.process_tls_records(input).state else { return };
            if encode(&mut self.outgoing, |buf| data.encode(buf)).is_err() {
                return;
            }
        }
    }

    /// Writes `outgoing` to the socket; Ready(Ok) once it is all out.
    fn poll_send_outgoing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.sent..]))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => self.sent += n,
            }
        }
        self.outgoing = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Copies kept plaintext to `out`.
    fn take_plain(&mut self, out: &mut [u8]) -> usize {
        let n = (self.plain.len() - self.taken).min(out.len());
        out[..n].copy_from_slice(&self.plain[self.taken..self.taken + n]);
        self.taken += n;
        if self.taken == self.plain.len() {
            self.plain = Vec::new();
            self.taken = 0;
        }
        n
    }

    /// Reads and decrypts into `out` through the thread's receive buffer.
    fn poll_read_records(&mut self, cx: &mut Context<'_>, out: &mut [u8], receive: &mut [u8]) -> Poll<io::Result<usize>> {
        // `receive[start..end]`: ciphertext not yet processed.
        let (mut start, mut end) = (0, self.incoming.len());
        receive[..end].copy_from_slice(&self.incoming);
        self.incoming = Vec::new();
        let mut filled = 0;
        let result = loop {
            // With no input, rustls has nothing to do: straight to the socket.
            if start < end {
                let mut used = 0;
                let stop = self.process_slice(&mut receive[start..end], &mut used, out, &mut filled, None);
                start += used;
                match stop {
                    Err(e) => break Poll::Ready(Err(e)),
                    Ok(Stop::OutFull) => break Poll::Ready(Ok(filled)),
                    Ok(Stop::PeerClosed | Stop::Closed) => break Poll::Ready(Ok(filled)),
                    Ok(Stop::NeedInput | Stop::Sealed(_)) if filled > 0 => break Poll::Ready(Ok(filled)),
                    Ok(Stop::NeedInput | Stop::Sealed(_)) => {}
                }
            }
            if start == end {
                (start, end) = (0, 0);
            } else if end == receive.len() {
                receive.copy_within(start..end, 0);
                (start, end) = (0, end - start);
            }
            if end == receive.len() {
                // A whole buffer that is not one record yet: rustls refuses
                // records this large before it comes to this.
                break Poll::Ready(Err(invalid("TLS record larger than the receive buffer")));
            }
            match Pin::new(&mut self.io).poll_read(cx, &mut receive[end..]) {
                Poll::Pending => break Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    // The TCP stream ended without close_notify: the end of input all the same.
                    self.read_closed = true;
                    break Poll::Ready(Ok(0));
                }
                Poll::Ready(Ok(n)) => end += n,
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
            }
        };
        if start < end {
            self.incoming = receive[start..end].to_vec();
        }
        result
    }
}

/// Encodes a record into the end of `outgoing`, growing it to the size asked.
fn encode(outgoing: &mut Vec<u8>, mut f: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>) -> io::Result<()> {
    let at = outgoing.len();
    let n = match f(&mut []) {
        Ok(n) => n,
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            outgoing.resize(at + required_size, 0);
            f(&mut outgoing[at..]).map_err(invalid)?
        }
        Err(e) => return Err(invalid(e)),
    };
    outgoing.truncate(at + n);
    Ok(())
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ServerStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if out.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.taken < this.plain.len() {
            return Poll::Ready(Ok(this.take_plain(out)));
        }
        if this.read_closed {
            return Poll::Ready(Ok(0));
        }
        let result = with_scratch(|scratch| this.poll_read_records(cx, out, &mut scratch.receive));
        // What reading produced for the client (an alert, a key update, a
        // session ticket) goes out now if the socket takes it.
        if this.sent < this.outgoing.len() {
            let _ = this.poll_send_outgoing(cx);
        }
        result
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ServerStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    /// Gathers up to four records' worth of `bufs`, encrypts them as few
    /// records, and sends them; what the socket does not take stays in
    /// `outgoing`, and the next write waits for it.
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_send_outgoing(cx))?;
        with_scratch(|scratch| {
            scratch.plaintext.clear();
            for buf in bufs {
                let room = SEND_PLAINTEXT_BYTES - scratch.plaintext.len();
                scratch.plaintext.extend_from_slice(&buf[..buf.len().min(room)]);
            }
            if scratch.plaintext.is_empty() {
                return Poll::Ready(Ok(0));
            }
            let sealed = loop {
                let mut input = std::mem::take(&mut this.incoming);
                let stop = this.process(&mut input, &mut [], &mut 0, Some(Seal::Data(&scratch.plaintext, &mut scratch.ciphertext)));
                this.incoming = input;
                match stop? {
                    Stop::Sealed(n) => break n,
                    // Input left unread is kept in `plain`; go on to the write.
                    Stop::OutFull | Stop::PeerClosed => {}
                    Stop::NeedInput => return Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
                    Stop::Closed => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                }
            };
            let records = &scratch.ciphertext[..sealed];
            if this.sent < this.outgoing.len() {
                // Records encoded meanwhile (a key update) go first.
                this.outgoing.extend_from_slice(records);
            } else {
                let mut at = 0;
                while at < records.len() {
                    match Pin::new(&mut this.io).poll_write(cx, &records[at..]) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                        Poll::Ready(Ok(n)) => at += n,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => break,
                    }
                }
                this.outgoing.extend_from_slice(&records[at..]);
            }
            Poll::Ready(Ok(scratch.plaintext.len()))
        })
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_outgoing(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    /// Sends close_notify, then closes the stream under it.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_queued {
            this.close_queued = true;
            let mut input = std::mem::take(&mut this.incoming);
            let stop = this.process(&mut input, &mut [], &mut 0, Some(Seal::CloseNotify));
            this.incoming = input;
            stop?;
        }
        ready!(this.poll_send_outgoing(cx))?;
        Pin::new(&mut this.io).poll_close(cx)
    }
}

#[cfg(test)]
mod tests;
