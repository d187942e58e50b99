//! Graceful shutdown (SIGTERM): what a client was told was accepted reaches
//! its subscribers, and slow readers get everything queued for them before
//! their 1001, for as long as `[shutdown] drain_timeout_ms` allows.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::Message;

use crate::util::{Client, Server};

/// Reads text frames until the server's close; returns them and the code.
fn read_to_close(c: &mut Client) -> (Vec<Value>, u16) {
    let mut frames = Vec::new();
    loop {
        match c.ws.read() {
            Ok(Message::Text(t)) => frames.push(serde_json::from_str(&t).unwrap()),
            Ok(Message::Close(f)) => {
                // Our close reply goes out: the server need not wait for it.
                let _ = c.ws.flush();
                return (frames, f.map_or(1005, |f| f.code.into()));
            }
            Ok(_) => {}
            Err(e) => panic!("the connection ended without a close frame after {} frames: {e}", frames.len()),
        }
    }
}

/// Issue 22.2: the heartbeat sweeper aborted the drain's own closes after
/// `close_timeout_ms` (1 s here), so a slow reader with 6 MB queued got about
/// a third of what was acknowledged, then EOF without a close frame.
#[test]
fn a_drain_gives_a_slow_reader_everything_acknowledged_before_its_1001() {
    const MESSAGES: u64 = 3000;
    let config = "[shutdown]\ndrain_timeout_ms = 10000\n[queue]\nclose_timeout_ms = 1000\nmax_messages = 10000\nmax_bytes = 16777216\n[limits]\npublish_rate = 0\n";
    let mut server = Server::start(config, &["--shards", "1"]);
    let mut slow = server.client();
    slow.subscribe("news");
    let mut publisher = server.client();
    let filler = "x".repeat(2000);
    for n in 0..MESSAGES {
        publisher.send(json!({"type":"publish","topic":"news","payload":{"n":n,"fill":filler},"id":n}));
    }
    for n in 0..MESSAGES {
        assert_eq!(publisher.recv(), json!({"type":"ack","id":n}), "every publish acknowledged before the signal");
    }
    let started = Instant::now();
    server.signal(libc::SIGTERM);
    // About 1.5 MB/s: 6 MB take about 4 s, four times close_timeout_ms.
    let mut next = 0;
    let code = loop {
        match slow.ws.read() {
            Ok(Message::Text(t)) => {
                let m: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(m["payload"]["n"], next, "in order, nothing skipped");
                next += 1;
                if next % 30 == 0 {
                    std::thread::sleep(Duration::from_millis(40));
                }
            }
            Ok(Message::Close(f)) => {
                let _ = slow.ws.flush();
                break f.map_or(1005, |f| u16::from(f.code));
            }
            Ok(_) => {}
            Err(e) => panic!("EOF without a close frame after {next} of {MESSAGES} messages ({:?}): {e}", started.elapsed()),
        }
    };
    assert_eq!((next, code), (MESSAGES, 1001), "everything acknowledged, then 1001");
    assert!(started.elapsed() > Duration::from_secs(2), "the slow reader set the pace");
    drop(publisher);
    assert_eq!(server.wait_exit(Duration::from_secs(15)), Some(0));
    assert!(!server.stderr().contains("drain timeout"), "{}", server.stderr());
}

/// Issue 22.2: the bus loop returned at the shutdown signal, so publishes
/// acknowledged to their publisher but still in a channel between shards
/// (or waiting for room in one) never reached the other shard's
/// subscribers. With a bus of 2 most of them wait at any moment.
#[test]
fn a_shutdown_delivers_what_is_queued_between_shards() {
    let config = "[bus]\ncapacity = 2\n[limits]\npublish_rate = 0\n[queue]\nmax_messages = 100000\nmax_bytes = 67108864\n\
                  [[namespaces]]\npattern = \"chat:*\"\nsubscribe = \"anyone\"\npublish = \"anyone\"\nhistory_size = 10000\nhistory_ttl_ms = 60000\n\
                  [[namespaces]]\npattern = \"*\"\nsubscribe = \"anyone\"\npublish = \"anyone\"\n";
    let mut server = Server::start(config, &["--shards", "2"]);
    let mut clients = server.clients_on_every_shard(2);
    let mut subscriber = clients.pop().unwrap();
    let mut publisher = clients.pop().unwrap();
    subscriber.subscribe("news");
    subscriber.subscribe("chat:1");
    let reading = std::thread::spawn(move || read_to_close(&mut subscriber));
    let topics = ["news", "chat:1"];
    for n in 0..4000u64 {
        publisher.send(json!({"type":"publish","topic":topics[n as usize % 2],"payload":n,"id":n}));
    }
    // The signal comes while publishes are in flight between the shards.
    let mut replies: Vec<Value> = (0..20).map(|_| publisher.recv()).collect();
    server.signal(libc::SIGTERM);
    let (rest, code) = read_to_close(&mut publisher);
    assert_eq!(code, 1001);
    replies.extend(rest);
    let acked: Vec<u64> = replies.iter().filter(|r| r["type"] == "ack").map(|r| r["id"].as_u64().unwrap()).collect();
    assert!(acked.len() >= 20, "{replies:?}");
    let (frames, code) = reading.join().unwrap();
    assert_eq!(code, 1001);
    let got: HashSet<u64> = frames.iter().filter(|f| f["type"] == "message").map(|f| f["payload"].as_u64().unwrap()).collect();
    let lost: Vec<u64> = acked.iter().copied().filter(|n| !got.contains(n)).collect();
    assert!(lost.is_empty(), "{} acknowledged publishes never reached the other shard: {:?}…", lost.len(), &lost[..lost.len().min(10)]);
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(!server.stderr().contains("drain timeout"), "{}", server.stderr());
}
