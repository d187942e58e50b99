//! shardcast-baseline: the server a competent Rust developer writes first,
//! for `shardcast-bench compare` to measure shardcast against in the same run.
//!
//! tokio (multi-threaded) + tokio-tungstenite, protocol v1 (docs/protocol.md)
//! for subscribe/unsubscribe/publish/ping, `/echo` as an echo endpoint. One
//! topic map behind a mutex, one writer task per connection fed by a bounded
//! mpsc queue (1024 messages; a full queue drops the message). Each publish
//! is serialised once into a `Utf8Bytes` shared by reference: the baseline
//! is idiomatic, not naive.
//!
//! Usage: shardcast-baseline [--listen 127.0.0.1:0] [--threads N]
//! Prints `listening on ws://IP:PORT` when ready, like shardcast.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

type Topics = Arc<Mutex<HashMap<String, HashMap<u64, mpsc::Sender<Message>>>>>;

#[derive(serde::Deserialize)]
struct Req<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    topic: Option<&'a str>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    id: Option<u64>,
}

fn main() {
    let mut listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().and_then(|v| v.parse().ok()).expect("--listen IP:PORT"),
            "--threads" => threads = args.next().and_then(|v| v.parse().ok()).expect("--threads N"),
            other => {
                eprintln!("shardcast-baseline: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build().unwrap();
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await.expect("bind");
        println!("listening on ws://{}", listener.local_addr().unwrap());
        let topics: Topics = Arc::default();
        let ids = Arc::new(AtomicU64::new(0));
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let id = ids.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(serve(stream, id, topics.clone()));
                }
                _ = tokio::signal::ctrl_c() => break,
            }
        }
    });
}

// The handshake callback's error type is tungstenite's HTTP response.
#[allow(clippy::result_large_err)]
async fn serve(stream: TcpStream, id: u64, topics: Topics) {
    let _ = stream.set_nodelay(true);
    let mut path = String::new();
    let ws = tokio_tungstenite::accept_hdr_async(stream, |req: &Request, resp: Response| {
        path = req.uri().path().to_string();
        Ok(resp)
    })
    .await;
    let Ok(ws) = ws else { return };
    let (mut sink, mut source) = ws.split();
    if path == "/echo" {
        while let Some(Ok(m)) = source.next().await {
            if (m.is_text() || m.is_binary()) && sink.send(m).await.is_err() {
                break;
            }
        }
        return;
    }
    let (tx, mut rx) = mpsc::channel::<Message>(1024);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.feed(m).await.is_err() {
                return;
            }
            while let Ok(m) = rx.try_recv() {
                if sink.feed(m).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let welcome = format!(r#"{{"type":"welcome","client":"{id}","node":"baseline","shard":0}}"#);
    let _ = tx.send(Message::text(welcome)).await;
    let mut mine: Vec<String> = Vec::new();
    while let Some(Ok(msg)) = source.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(req) = serde_json::from_str::<Req>(&text) else {
            let _ = tx.try_send(Message::text(r#"{"type":"error","code":"bad_json","message":"bad json"}"#));
            continue;
        };
        match (req.kind, req.topic) {
            ("subscribe", Some(t)) => {
                topics.lock().unwrap().entry(t.to_string()).or_default().insert(id, tx.clone());
                mine.push(t.to_string());
            }
            ("unsubscribe", Some(t)) => {
                if let Some(subs) = topics.lock().unwrap().get_mut(t) {
                    subs.remove(&id);
                }
            }
            ("publish", Some(t)) => {
                let payload = req.payload.map_or("null", |p| p.get());
                let out = Message::Text(Utf8Bytes::from(format!(
                    r#"{{"type":"message","topic":{},"payload":{}}}"#,
                    serde_json::to_string(t).unwrap(),
                    payload
                )));
                let targets: Vec<_> =
                    topics.lock().unwrap().get(t).map(|s| s.values().cloned().collect()).unwrap_or_default();
                for target in targets {
                    let _ = target.try_send(out.clone());
                }
            }
            ("ping", _) => {
                let _ = tx.try_send(Message::text(r#"{"type":"pong"}"#));
            }
            _ => continue,
        }
        if let Some(rid) = req.id {
            let _ = tx.try_send(Message::text(format!(r#"{{"type":"ack","id":{rid}}}"#)));
        }
    }
    let mut map = topics.lock().unwrap();
    for t in mine {
        if let Some(subs) = map.get_mut(&t) {
            subs.remove(&id);
            if subs.is_empty() {
                map.remove(&t);
            }
        }
    }
    drop(map);
    writer.abort();
}
