//! Recovery under churn: clients that reconnect again and again while
//! publishers run, each resubscribing to several history topics at once
//! (what `clients/js` does on every reconnect), must see every offset of
//! every topic exactly once, in order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::history::node_config;
use crate::util::*;

const TOPICS: [&str; 4] = ["chat:r0", "chat:r1", "chat:r2", "chat:r3"];
const CLIENTS: usize = 4;
const RECONNECTS: usize = 12;

/// Where one client is in each topic: the last offset it got, and the
/// topic's epoch.
#[derive(Default)]
struct Positions {
    last: HashMap<&'static str, (u64, String)>,
    /// Acks received in all.
    acks: usize,
}

impl Positions {
    /// Takes one frame: an ack (for the topic its id names), a message, or
    /// anything else (ignored). Panics at the first gap or duplicate.
    fn take(&mut self, client: usize, frame: &Value) {
        match frame["type"].as_str() {
            Some("ack") => {
                self.acks += 1;
                let topic = TOPICS[frame["id"].as_u64().unwrap() as usize % TOPICS.len()];
                let epoch = frame["epoch"].as_str().unwrap().to_string();
                let top = frame["offset"].as_u64().unwrap();
                match self.last.get(topic) {
                    None => {
                        self.last.insert(topic, (top, epoch));
                    }
                    Some((last, known)) => {
                        assert_eq!(frame["recovered"], true, "client {client}, {topic}: recovery from {last} failed: {frame}");
                        assert_eq!(&epoch, known, "one epoch for the whole run");
                        let mut at = *last;
                        for p in frame["publications"].as_array().unwrap() {
                            let offset = p["offset"].as_u64().unwrap();
                            assert_eq!(offset, at + 1, "client {client}, {topic}: recovered {offset} after {at}");
                            at = offset;
                        }
                        assert_eq!(at, top, "client {client}, {topic}: the recovery ends at the ack's offset");
                        self.last.insert(topic, (top, epoch));
                    }
                }
            }
            Some("message") => {
                let topic = TOPICS.iter().find(|t| **t == frame["topic"].as_str().unwrap()).unwrap();
                let offset = frame["offset"].as_u64().unwrap();
                let (last, _) = self.last.get_mut(topic).unwrap_or_else(|| panic!("client {client}: {topic} message before its ack: {frame}"));
                assert_eq!(offset, *last + 1, "client {client}, {topic}: live {offset} after {last} (a duplicate or a gap)");
                *last = offset;
            }
            _ => {}
        }
    }
}

/// Sends the subscribes for every topic back to back, without waiting for
/// an ack in between; recovering where a position is known. Ids are
/// `round * TOPICS + topic`.
fn resubscribe(c: &mut Client, positions: &Positions, round: usize) {
    for (i, topic) in TOPICS.iter().enumerate() {
        let mut req = json!({"type":"subscribe","topic":topic,"id":round * TOPICS.len() + i});
        if let Some((offset, epoch)) = positions.last.get(topic) {
            req["recover"] = json!({"offset":offset,"epoch":epoch});
        }
        c.send(req);
    }
}

/// One churning client: `RECONNECTS` times, connect (alternating over
/// `urls`), resubscribe to every topic at once, read for a while, vanish.
/// Then one last connect that reads until every topic reaches `tops`.
fn churn(client: usize, urls: Vec<String>, stopped: Arc<AtomicBool>, tops: Arc<[AtomicU64; 4]>) {
    let mut positions = Positions::default();
    for round in 0..=RECONNECTS {
        let mut c = Client::connect(&urls[(client + round) % urls.len()]);
        resubscribe(&mut c, &positions, round);
        let last_round = round == RECONNECTS;
        let acked = positions.acks + TOPICS.len();
        let until = Instant::now() + Duration::from_millis(150 + 40 * client as u64);
        let give_up = Instant::now() + Duration::from_secs(20);
        loop {
            let caught_up = stopped.load(Ordering::Relaxed)
                && TOPICS.iter().enumerate().all(|(i, t)| positions.last.get(t).is_some_and(|(o, _)| *o >= tops[i].load(Ordering::Relaxed)));
            let resubscribed = positions.acks >= acked;
            if resubscribed && ((!last_round && Instant::now() >= until) || (last_round && caught_up)) {
                break;
            }
            let offsets: Vec<u64> = TOPICS.iter().map(|t| positions.last.get(t).map_or(0, |p| p.0)).collect();
            assert!(Instant::now() < give_up, "client {client}: stalled at {offsets:?}, the publisher ended at {tops:?}");
            if let Some(frame) = c.try_recv(Duration::from_millis(100)) {
                positions.take(client, &frame);
            }
        }
        c.abort();
    }
}

/// Publishes numbered messages round robin over the topics until `stop`,
/// then records each topic's final offset in `tops`.
fn publish(url: String, stop: Arc<AtomicBool>, stopped: Arc<AtomicBool>, tops: Arc<[AtomicU64; 4]>) {
    let mut p = Client::connect(&url);
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        p.publish(TOPICS[(i % 4) as usize], json!(i));
        i += 1;
        if i % 16 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    for (n, topic) in TOPICS.iter().enumerate() {
        let h = p.request(json!({"type":"history","topic":topic,"limit":0}), 1_000 + n as u64);
        tops[n].store(h["offset"].as_u64().unwrap(), Ordering::Relaxed);
    }
    stopped.store(true, Ordering::Relaxed);
}

/// `CLIENTS` churning clients over `sub_urls` while one publisher runs on `pub_url`.
fn reconnect_storm(sub_urls: Vec<String>, pub_url: String) {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::new(AtomicBool::new(false));
    let tops: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
    let publisher = {
        let (stop, stopped, tops) = (stop.clone(), stopped.clone(), tops.clone());
        std::thread::spawn(move || publish(pub_url, stop, stopped, tops))
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (urls, stopped, tops) = (sub_urls.clone(), stopped.clone(), tops.clone());
            std::thread::spawn(move || churn(client, urls, stopped, tops))
        })
        .collect();
    // The churn rounds take ~3 s; publishing stops a little before the last.
    std::thread::sleep(Duration::from_millis(2_500));
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    for c in clients {
        if let Err(e) = c.join() {
            std::panic::resume_unwind(e);
        }
    }
    assert!(tops.iter().all(|t| t.load(Ordering::Relaxed) > 100), "the publisher ran");
}

/// Issue 22.1, one node: the per-connection hold kept one fence, so the
/// next topic's subscribe let the previous topic's late messages through
/// (live 8074 again after a recovery up to 8074, with a bus of 4).
#[test]
fn resubscribing_to_several_history_topics_at_once_delivers_every_offset_once() {
    let server = Server::start(&node_config(100_000, 600_000, "", "[bus]\ncapacity = 4\n"), &["--shards", "2"]);
    let url = server.url("/ws");
    reconnect_storm(vec![url.clone()], url);
    assert!(server.metric("recoveries_total") >= (CLIENTS * RECONNECTS * TOPICS.len()) as u64);
}

/// Issue 22.1, two nodes through Redis (the subscribers alternate nodes).
#[test]
fn resubscribing_to_several_history_topics_at_once_through_redis_delivers_every_offset_once() {
    let redis = Redis::start();
    let extra = format!("[redis]\nurl = \"{}\"\n", redis.url());
    let config = node_config(100_000, 600_000, "max_message_bytes = 1048576", &extra);
    let a = Server::start(&config, &["--shards", "2"]);
    let b = Server::start(&config, &["--shards", "2"]);
    reconnect_storm(vec![a.url("/ws"), b.url("/ws")], a.url("/ws"));
}
