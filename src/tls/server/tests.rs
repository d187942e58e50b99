//! The stream against a real rustls client over an in-memory pipe that
//! hands bytes over in chunks of a chosen size, driven by hand (a
//! `Pending` read is retried after the client has had its turn).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::rc::Rc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, SupportedProtocolVersion};

use super::*;

/// The server's end of the pipe: reads what the client wrote, `chunk`
/// bytes at most per call; writes at most `chunk` bytes per call.
struct Pipe {
    from_client: Rc<RefCell<VecDeque<u8>>>,
    to_client: Rc<RefCell<Vec<u8>>>,
    chunk: usize,
    eof: Rc<RefCell<bool>>,
}

impl AsyncRead for Pipe {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut from = self.from_client.borrow_mut();
        if from.is_empty() {
            return if *self.eof.borrow() { Poll::Ready(Ok(0)) } else { Poll::Pending };
        }
        let n = from.len().min(buf.len()).min(self.chunk);
        for (slot, byte) in buf.iter_mut().zip(from.drain(..n)) {
            *slot = byte;
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let n = buf.len().min(self.chunk);
        self.to_client.borrow_mut().extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A pipe whose client has sent `bytes` and then ended its stream;
/// also what the server sends back.
fn sent_then_eof(bytes: impl IntoIterator<Item = u8>, chunk: usize) -> (Pipe, Rc<RefCell<Vec<u8>>>) {
    let to_client = Rc::<RefCell<Vec<u8>>>::default();
    let pipe = Pipe { from_client: Rc::new(RefCell::new(bytes.into_iter().collect())), to_client: Rc::clone(&to_client), chunk, eof: Rc::new(RefCell::new(true)) };
    (pipe, to_client)
}

struct Client {
    conn: ClientConnection,
    from_client: Rc<RefCell<VecDeque<u8>>>,
    to_client: Rc<RefCell<Vec<u8>>>,
    eof: Rc<RefCell<bool>>,
    received: Vec<u8>,
}

impl Client {
    /// Moves bytes both ways and lets the client process what it got.
    fn turn(&mut self) {
        let mut out = Vec::new();
        while self.conn.wants_write() {
            self.conn.write_tls(&mut out).unwrap();
        }
        self.from_client.borrow_mut().extend(out);
        let incoming = std::mem::take(&mut *self.to_client.borrow_mut());
        let mut rest = &incoming[..];
        while !rest.is_empty() {
            self.conn.read_tls(&mut rest).unwrap();
            self.conn.process_new_packets().unwrap();
            let mut buf = [0; 4096];
            while let Ok(n @ 1..) = io::Read::read(&mut self.conn.reader(), &mut buf) {
                self.received.extend_from_slice(&buf[..n]);
            }
        }
    }
}

fn configs(versions: &[&'static SupportedProtocolVersion]) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = CertificateDer::from(made.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

/// Polls `f` to completion, giving the client a turn after every `Pending`.
fn drive<T>(client: &mut Client, mut f: impl FnMut(&mut Context<'_>) -> Poll<T>) -> T {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    for _ in 0..1_000_000 {
        if let Poll::Ready(v) = f(&mut cx) {
            return v;
        }
        client.turn();
    }
    panic!("no progress");
}

fn connect(versions: &[&'static SupportedProtocolVersion], chunk: usize) -> (Client, ServerStream<Pipe>) {
    let (server_config, client_config) = configs(versions);
    let (from_client, to_client, eof) = Default::default();
    let pipe = Pipe { from_client: Rc::clone(&from_client), to_client: Rc::clone(&to_client), chunk, eof: Rc::clone(&eof) };
    let conn = ClientConnection::new(client_config, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut client = Client { conn, from_client, to_client, eof, received: Vec::new() };
    let mut accept = Box::pin(ServerStream::accept(server_config, pipe));
    let server = drive(&mut client, |cx| accept.as_mut().poll(cx)).unwrap();
    client.turn();
    assert!(!client.conn.is_handshaking());
    (client, server)
}

/// Reads from the server until `want` bytes came, `read_size` at a time.
fn read_all(client: &mut Client, server: &mut ServerStream<Pipe>, want: usize, read_size: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0; read_size];
    while got.len() < want {
        let n = drive(client, |cx| Pin::new(&mut *server).poll_read(cx, &mut buf)).unwrap();
        assert!(n > 0, "early EOF after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
    }
    got
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn carries_data_both_ways_whatever_the_chunking_and_the_version() {
    for versions in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12]] {
        for chunk in [1, 7, 300, 100_000] {
            let (mut client, mut server) = connect(versions, chunk);
            // Client to server: small, then larger than a record and than the receive buffer.
            for (len, read_size) in [(5, 64 * 1024), (40_000, 64 * 1024), (200_000, 64 * 1024), (20_000, 10)] {
                let sent = pattern(len, chunk as u8);
                let mut got = Vec::new();
                while got.len() < len {
                    // The client buffers 64 KiB of plaintext at most.
                    let n = io::Write::write(&mut client.conn.writer(), &sent[got.len()..]).unwrap();
                    got.extend(read_all(&mut client, &mut server, n, read_size));
                }
                assert_eq!(got, sent, "chunk {chunk}, {len} bytes");
            }
            // Server to client: one vectored write of several slices, then one larger than it takes at once.
            let parts = [pattern(10, 1), pattern(70_000, 2), pattern(3, 3)];
            let slices: Vec<_> = parts.iter().map(|p| io::IoSlice::new(p)).collect();
            let mut written = 0;
            let total: usize = parts.iter().map(Vec::len).sum();
            while written < total {
                let mut rest = Vec::new();
                let mut skip = written;
                for s in &slices {
                    if skip >= s.len() {
                        skip -= s.len();
                    } else {
                        rest.push(io::IoSlice::new(&s[skip..]));
                        skip = 0;
                    }
                }
                written += drive(&mut client, |cx| Pin::new(&mut server).poll_write_vectored(cx, &rest)).unwrap();
            }
            drive(&mut client, |cx| Pin::new(&mut server).poll_flush(cx)).unwrap();
            client.turn();
            assert_eq!(client.received, parts.concat(), "chunk {chunk}");
            assert!(server.outgoing.capacity() == 0 && server.incoming.capacity() == 0 && server.plain.capacity() == 0, "nothing kept once idle");
        }
    }
}

#[test]
fn close_notify_and_eof_end_the_input() {
    let (mut client, mut server) = connect(&[&rustls::version::TLS13], 1000);
    io::Write::write_all(&mut client.conn.writer(), b"last words").unwrap();
    client.conn.send_close_notify();
    client.turn();
    assert_eq!(read_all(&mut client, &mut server, 10, 100), b"last words");
    let mut buf = [0; 100];
    assert_eq!(drive(&mut client, |cx| Pin::new(&mut server).poll_read(cx, &mut buf)).unwrap(), 0);
    // Our close_notify reaches the client.
    drive(&mut client, |cx| Pin::new(&mut server).poll_close(cx)).unwrap();
    client.turn();
    assert!(client.conn.process_new_packets().unwrap().peer_has_closed());

    let (mut client, mut server) = connect(&[&rustls::version::TLS13], 1000);
    *client.eof.borrow_mut() = true;
    assert_eq!(drive(&mut client, |cx| Pin::new(&mut server).poll_read(cx, &mut buf)).unwrap(), 0);
}

#[test]
fn garbage_is_an_error_with_an_alert_and_no_panic() {
    // Before the handshake, and after it, at every chunking.
    for chunk in [1, 5, 1000] {
        let (server_config, _) = configs(&[&rustls::version::TLS13]);
        let (pipe, to_client) = sent_then_eof(*b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", chunk);
        let result = futures_lite::future::block_on(ServerStream::accept(server_config, pipe));
        assert!(result.is_err());
        assert_eq!(to_client.borrow()[0], 0x15, "an alert record");

        let (mut client, mut server) = connect(&[&rustls::version::TLS13], chunk);
        client.from_client.borrow_mut().extend([0x17, 0x03, 0x03, 0x00, 0x20].iter().chain(&[0xAA; 32]));
        let mut buf = [0; 100];
        assert!(drive(&mut client, |cx| Pin::new(&mut server).poll_read(cx, &mut buf)).is_err());
    }
}

#[test]
fn random_bytes_at_any_point_never_panic() {
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..500 {
        let (server_config, _) = configs(&[&rustls::version::TLS13, &rustls::version::TLS12]);
        // A plausible record header, then noise.
        let len = (next() % 600) as usize;
        let mut bytes = vec![0x16, 0x03, 0x01, (len >> 8) as u8, len as u8];
        bytes.extend((0..len + (next() % 50) as usize).map(|_| next() as u8));
        let (pipe, _) = sent_then_eof(bytes, 1 + (next() % 64) as usize);
        assert!(futures_lite::future::block_on(ServerStream::accept(server_config, pipe)).is_err());
    }
    // After the handshake: records of every type with random contents.
    let mut buf = [0; 100];
    for _ in 0..500 {
        let (mut client, mut server) = connect(&[&rustls::version::TLS13, &rustls::version::TLS12], 1 + (next() % 64) as usize);
        let len = (next() % 300) as usize;
        let kind = [0x14, 0x15, 0x16, 0x17, 0x18][(next() % 5) as usize];
        client.from_client.borrow_mut().extend([kind, 0x03, 0x03, (len >> 8) as u8, len as u8]);
        client.from_client.borrow_mut().extend((0..len).map(|_| next() as u8));
        *client.eof.borrow_mut() = true;
        let _ = drive(&mut client, |cx| Pin::new(&mut server).poll_read(cx, &mut buf));
    }
}
