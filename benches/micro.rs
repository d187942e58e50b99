//! Micro-benchmarks of the hot paths (criterion; `cargo bench --bench micro`):
//! encoding one publish's frame and parsing a request (JSON and FlatBuffers), queueing one message to
//! 1,000 local subscribers, one cross-shard hop, subscribe + unsubscribe,
//! verifying a connection token (HS256, RS256, ES256, EdDSA), and a
//! namespace permission check.
//!
//! These run without sockets: they measure the server's own CPU cost per
//! operation, which bounds what the end-to-end benches can show.

use std::hint::black_box;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardcast::clock::Stamp;
use shardcast::bus::{self, PublishMsg};
use shardcast::config::{Config, Overrides};
use shardcast::peer::Peer;
use shardcast::metrics::ShardStats;
use shardcast::protocol::{flatbuf, json, Encoding, Kind, Outgoing, Payload};
use shardcast::shard::{Shard, Then};

const PUBLISH: &[u8] = br#"{"type":"publish","topic":"news","payload":{"s":12345,"p":0,"t":987654321,"x":"xxxxxxxxxxxxxxxxxx"},"id":7}"#;
const PAYLOAD: &[u8] = br#"{"s":12345,"p":0,"t":987654321,"x":"xxxxxxxxxxxxxxxxxx"}"#;

fn shard(shards: usize) -> (Shard, Vec<bus::Inbox>) {
    let config = Config::from_toml("[queue]\nmax_messages = 1000000\nmax_bytes = 4294967296\n", &Overrides { listen: None, shards: Some(shards as u64), ..Default::default() }).unwrap();
    let (mailboxes, inboxes) = bus::build(shards, 1 << 16).unwrap();
    let stats: Arc<[ShardStats]> = (0..shards).map(|_| ShardStats::default()).collect();
    let readiness = std::rc::Rc::new(shardcast::readiness::Readiness::new("micro", || {}).unwrap());
    (Shard::new(0, Arc::new(config), mailboxes, stats, shardcast::shard::NodeShared { connections: Arc::new(AtomicUsize::new(0)), admission: Default::default(), sessions: Arc::new(shardcast::bus::sessions::Sessions::new(1)) }, readiness), inboxes)
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_message_frame_64B", |b| b.iter(|| json::message_frame(black_box("news"), black_box(PAYLOAD), true)));
    g.bench_function("parse_publish_request", |b| b.iter(|| json::parse_request(black_box(PUBLISH)).is_ok()));
    // The same message and request in FlatBuffers (schemas/client.fbs).
    g.bench_function("encode_message_frame_64B_flatbuffers", |b| {
        b.iter(|| flatbuf::message_frame(black_box("news"), black_box(PAYLOAD)))
    });
    let fb_publish = {
        use flatbuf::schema::*;
        let mut fbb = flatbuffers::FlatBufferBuilder::new();
        let topic = fbb.create_string("news");
        let payload = fbb.create_vector(PAYLOAD);
        let publish = Publish::create(&mut fbb, &PublishArgs { topic: Some(topic), payload: Some(payload), skip_self: false });
        let root = ClientFrame::create(&mut fbb, &ClientFrameArgs { id: Some(7), request_type: Request::Publish, request: Some(publish.as_union_value()) });
        fbb.finish(root, None);
        fbb.finished_data().to_vec()
    };
    g.bench_function("parse_publish_request_flatbuffers", |b| b.iter(|| flatbuf::parse_request(black_box(&fb_publish)).is_ok()));
    g.finish();
}

fn fanout(c: &mut Criterion) {
    let (shard, _inboxes) = shard(1);
    let peers: Vec<Rc<Peer>> = (0..1000).map(|_| Rc::new(Peer::new(shard.next_conn_id(), Instant::now()))).collect();
    for p in &peers {
        shard.subscribe(p, "news", Default::default(), Then::Frame(None), None);
    }
    let msg = Outgoing::new("news", Kind::Message, Payload { bytes: PAYLOAD, json: true }, Encoding::Json, Stamp::now(), &ShardStats::default());
    let stats = ShardStats::default();
    let mut g = c.benchmark_group("fanout");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("enqueue_to_1000_local_subscribers", |b| {
        b.iter(|| {
            shard.deliver_local(&msg, None);
            // Empty the queues as a writer would, write-delay histogram
            // included (outside the measured cost would be better; this keeps
            // memory flat and is a few ns each).
            let written = Stamp::now();
            for p in &peers {
                let mut out = p.outbox();
                let len: usize = out.slices(1).map(<[u8]>::len).sum();
                out.consume(len, |queued| stats.write_delay.observe_micros(written.micros_since(queued)));
            }
        })
    });
    g.finish();
}

fn cross_shard(c: &mut Criterion) {
    let (mailboxes, inboxes) = bus::build(2, 1 << 16).unwrap();
    let msg = Outgoing::new("news", Kind::Message, Payload { bytes: PAYLOAD, json: true }, Encoding::Json, Stamp::now(), &ShardStats::default());
    let msg = PublishMsg::new(msg, None);
    let mut g = c.benchmark_group("bus");
    g.throughput(Throughput::Elements(1));
    g.bench_function("cross_shard_hop_send_recv", |b| {
        b.iter(|| {
            mailboxes[1].try_publish(msg.clone()).unwrap();
            black_box(inboxes[1].data.try_recv().unwrap());
        })
    });
    g.finish();
}

fn topics(c: &mut Criterion) {
    let (shard, _inboxes) = shard(1);
    let peer = Rc::new(Peer::new(shard.next_conn_id(), Instant::now()));
    let others: Vec<Rc<Peer>> = (0..100).map(|_| Rc::new(Peer::new(shard.next_conn_id(), Instant::now()))).collect();
    for p in &others {
        shard.subscribe(p, "busy", Default::default(), Then::Frame(None), None);
    }
    let mut g = c.benchmark_group("topic");
    g.throughput(Throughput::Elements(1));
    g.bench_function("subscribe_unsubscribe_busy_topic", |b| {
        b.iter(|| {
            shard.subscribe(&peer, black_box("busy"), Default::default(), Then::Frame(None), None);
            shard.unsubscribe("busy", peer.id);
        })
    });
    g.bench_function("subscribe_unsubscribe_new_topic", |b| {
        b.iter(|| {
            shard.subscribe(&peer, black_box("fresh"), Default::default(), Then::Frame(None), None);
            shard.unsubscribe("fresh", peer.id);
        })
    });
    g.finish();
    let _ = Bytes::new();
}

/// What auth costs per connection (verification) and per publish (a
/// namespace check), with the repository's test keys.
fn auth(c: &mut Criterion) {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use shardcast::auth::token::{TokenPolicy, Verifier};
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");
    let read = |name: &str| std::fs::read(format!("{keys}/{name}")).unwrap();
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    let claims = serde_json::json!({"sub": "alice", "exp": exp, "publish": ["chat:*"]});
    let mut g = c.benchmark_group("auth");
    let cases = [
        ("verify_hs256", Algorithm::HS256, EncodingKey::from_secret(b"secret"), None),
        ("verify_rs256", Algorithm::RS256, EncodingKey::from_rsa_pem(&read("rsa.key.pem")).unwrap(), Some(read("rsa.pub.pem"))),
        ("verify_es256", Algorithm::ES256, EncodingKey::from_ec_pem(&read("ec256.key.pem")).unwrap(), Some(read("ec256.pub.pem"))),
        ("verify_eddsa", Algorithm::EdDSA, EncodingKey::from_ed_pem(&read("ed25519.key.pem")).unwrap(), Some(read("ed25519.pub.pem"))),
    ];
    for (name, alg, key, public) in cases {
        let policy = TokenPolicy {
            hmac_secret: if public.is_none() { "secret" } else { "" },
            public_key_pem: public.as_deref(),
            require_exp: true,
            max_token_bytes: 8192,
            ..Default::default()
        };
        let verifier = Verifier::new(&policy).unwrap().unwrap();
        let token = encode(&Header::new(alg), &claims, &key).unwrap();
        g.bench_function(name, |b| b.iter(|| verifier.verify(black_box(&token)).unwrap()));
    }
    let config = Config::from_toml(
        "[[namespaces]]\npattern = \"admin:*\"\nsubscribe = \"nobody\"\npublish = \"nobody\"\n[[namespaces]]\npattern = \"chat:*\"\nsubscribe = \"users\"\npublish = \"claim\"\n",
        &Overrides::default(),
    )
    .unwrap();
    let verifier = Verifier::new(&TokenPolicy { hmac_secret: "s", require_exp: true, max_token_bytes: 8192, ..Default::default() }).unwrap().unwrap();
    let identity = verifier.verify(&encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"s")).unwrap()).unwrap();
    let glob = shardcast::auth::Glob::new("chat:*");
    g.bench_function("glob_match", |b| b.iter(|| glob.matches(black_box("chat:room-42"))));
    g.bench_function("namespace_check_claim", |b| {
        b.iter(|| config.namespaces.allows(black_box("chat:room-42"), shardcast::auth::Action::Publish, Some(&identity)))
    });
    g.finish();
}

criterion_group!(benches, codec, fanout, cross_shard, topics, auth);
criterion_main!(benches);
