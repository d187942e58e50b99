//! `soak` and `slowloris`: the server held up against misbehaviour for a
//! long time, measured.
//!
//! `soak` starts a redis-server and two nodes, keeps well-behaved clients
//! on both (subscribers that stay, publishers at a fixed rate, half of the
//! traffic crossing nodes through Redis) and, for `--duration`, thousands of
//! churning connections around them: connect, subscribe to random topics,
//! publish, leave cleanly or with a reset; mixed in, slow readers of a
//! firehose topic, oversized frames, garbage bytes and bad requests. It
//! samples every node's RSS and open descriptors (CSV and an SVG plot in
//! `--out`) and reports what the well-behaved clients were owed and got,
//! their latency, and RSS before the churn vs after it settled.
//!
//! `slowloris` measures a normal client's connect time (handshake to
//! welcome) on an idle node, then again while `--connections` clients send
//! their upgrade one byte a second, and checks that the server closes them
//! at its `handshake_timeout_ms`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bridge::Redises;
use crate::proc::{self, Spawned};
use crate::report::print_table;
use crate::ws::{field, put_frame, Target, Ws};
use crate::{sibling, TempConfig};

#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// Seconds of churn.
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// Churning connections open at once (over both nodes).
    #[arg(long, default_value_t = 2000)]
    churners: usize,
    /// Well-behaved subscribers, there from start to end (half on each node).
    #[arg(long, default_value_t = 200)]
    steady: usize,
    /// Topics the well-behaved clients use; each has a publisher on each node.
    #[arg(long, default_value_t = 10)]
    topics: usize,
    /// Publishes per second of each well-behaved publisher.
    #[arg(long, default_value_t = 50)]
    rate: u64,
    /// Seconds of quiet (well-behaved clients only) before and after the churn.
    #[arg(long, default_value_t = 30)]
    settle: u64,
    /// Shards per node.
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Where samples.csv and soak.svg go.
    #[arg(long, default_value = "target/soak")]
    out: PathBuf,
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
}

#[derive(Debug, Clone, Args)]
pub struct SlowlorisArgs {
    /// Slow connections, each sending its upgrade request a byte a second.
    #[arg(long, default_value_t = 5000)]
    connections: usize,
    /// The server's `[server] handshake_timeout_ms`.
    #[arg(long, default_value_t = 5000)]
    handshake_timeout_ms: u64,
    /// Normal connects measured in each phase (one at a time).
    #[arg(long, default_value_t = 300)]
    probes: usize,
    /// Shards.
    #[arg(long, default_value_t = 1)]
    shards: usize,
}

/// A small fast PRNG (xorshift64*): the churn's dice, not cryptography.
struct Dice(u64);

impl Dice {
    fn new(seed: u64) -> Dice {
        Dice(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) % n.max(1)
    }
}

fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// What the well-behaved subscribers saw, all together.
#[derive(Default)]
struct Steady {
    delivered: AtomicU64,
    missing: AtomicU64,
    duplicates: AtomicU64,
    /// Delivery latency: [published on the subscriber's node, across nodes].
    latency: Mutex<[Option<Histogram<u64>>; 2]>,
}

/// What the churn did and what the server answered.
#[derive(Default)]
struct Churn {
    sessions: AtomicU64,
    connect_failures: AtomicU64,
    resets: AtomicU64,
    clean_closes: AtomicU64,
    slow_readers: AtomicU64,
    slow_closed: AtomicU64,
    slow_1013_read: AtomicU64,
    oversized: AtomicU64,
    oversized_1009: AtomicU64,
    garbage: AtomicU64,
    garbage_closed: AtomicU64,
    bad_requests: AtomicU64,
    bad_request_errors: AtomicU64,
}

/// One sample of a process.
struct Sample {
    t: f64,
    phase: &'static str,
    rss: Vec<u64>,
    fds: Vec<u64>,
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// Reads until the server closes; returns the close code it sent (0 when
/// the connection ended without one), or None if `limit` passed first.
async fn until_closed(ws: &mut Ws, limit: Duration) -> Option<u16> {
    let read = async {
        while let Ok(true) = ws.read_frames(|_, _| {}).await {}
        ws.closed.unwrap_or(0)
    };
    tokio::time::timeout(limit, read).await.ok()
}

async fn steady_subscriber(
    target: Target,
    topic: String,
    node: u64,
    stats: Arc<Steady>,
    stop: Arc<AtomicBool>,
    epoch: Instant,
) -> Result<(), String> {
    let mut ws = Ws::connect(&target, None, false)
        .await
        .map_err(|e| format!("steady subscriber: {e}"))?;
    ws.welcome_and_subscribe(&topic)
        .await
        .map_err(|e| format!("steady subscribe: {e}"))?;
    let mut last: HashMap<u64, u64> = HashMap::new();
    let new_hist = || Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
    let mut hists = [new_hist(), new_hist()];
    while !stop.load(Ordering::Relaxed) {
        let read = tokio::time::timeout(
            Duration::from_millis(500),
            ws.read_frames(|op, p| {
                if op != 1 || !p.starts_with(br#"{"type":"message""#) {
                    return;
                }
                let (Some(publisher), Some(seq), Some(sent)) = (
                    field(p, br#""p":"#),
                    field(p, br#""s":"#),
                    field(p, br#""t":"#),
                ) else {
                    return;
                };
                let prev = last.entry(publisher).or_insert(0);
                if seq <= *prev {
                    stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                stats.missing.fetch_add(seq - *prev - 1, Ordering::Relaxed);
                *prev = seq;
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                // Publisher ids are odd on node A (0), even on node B (1).
                let across = (publisher + 1) % 2 != node;
                let _ = hists[usize::from(across)].record(now_ns(epoch).saturating_sub(sent).max(1));
            }),
        )
        .await;
        match read {
            Ok(Ok(true)) | Err(_) => {}
            Ok(Ok(false)) => return Err("a well-behaved subscriber was closed".into()),
            Ok(Err(e)) => return Err(format!("a well-behaved subscriber failed: {e}")),
        }
    }
    // `soak` stops the subscribers 2 s after the last publisher's final
    // ping was answered, so what was on its way has arrived.
    let mut all = stats.latency.lock().unwrap();
    for (sum, hist) in all.iter_mut().zip(hists) {
        match sum.as_mut() {
            Some(h) => h.add(&hist).expect("same bounds"),
            None => *sum = Some(hist),
        }
    }
    Ok(())
}

/// Publishes `{"p":id,"s":seq,"t":ns}` to `topic` at `rate`; returns how many.
async fn steady_publisher(
    target: Target,
    id: u64,
    topic: String,
    rate: u64,
    stop: Arc<AtomicBool>,
    epoch: Instant,
) -> Result<u64, String> {
    let mut ws = Ws::connect(&target, None, false)
        .await
        .map_err(|e| format!("steady publisher: {e}"))?;
    ws.next_text().await.map_err(|e| e.to_string())?;
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
    let mut seq = 0;
    let mut errors = 0;
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            _ = tick.tick() => {
                seq += 1;
                let msg = format!(r#"{{"type":"publish","topic":"{topic}","payload":{{"p":{id},"s":{seq},"t":{}}}}}"#, now_ns(epoch));
                ws.send_text(msg.as_bytes()).await.map_err(|e| format!("steady publisher: {e}"))?;
            }
            read = ws.read_frames(|op, p| if op == 1 && p.starts_with(br#"{"type":"error""#) { errors += 1 }) => {
                if !read.map_err(|e| e.to_string())? {
                    return Err("a well-behaved publisher was closed".into());
                }
            }
        }
    }
    // A ping answered means every publish before it was taken.
    ws.send_text(br#"{"type":"ping","id":1}"#)
        .await
        .map_err(|e| e.to_string())?;
    while !ws
        .next_text()
        .await
        .map_err(|e| e.to_string())?
        .starts_with(br#"{"type":"pong""#)
    {}
    if errors > 0 {
        return Err(format!("publisher {id}: {errors} publishes refused"));
    }
    Ok(seq)
}

/// The receive buffer of a slow reader's socket (SO_RCVBUF).
const SLOW_READER_BUFFER: u32 = 64 * 1024;

/// One churning connection's life, chosen by the dice.
async fn churn_once(targets: &[Target], dice: &mut Dice, churn: &Churn, topics: u64) {
    let target = &targets[dice.below(targets.len() as u64) as usize];
    let abrupt = dice.below(2) == 0;
    let roll = dice.below(100);
    let slow;
    let target = match roll {
        // A slow reader's socket buffers like a slow link's: with the
        // kernel's autotuning (up to tcp_rmem's max) a thousand readers that
        // never read would put the whole host, generator and nodes, under
        // TCP memory pressure, and the latency measured would be the kernel's.
        0..=9 => {
            slow = Target { recv_buffer: Some(SLOW_READER_BUFFER), ..target.clone() };
            &slow
        }
        _ => target,
    };
    let Ok(mut ws) = Ws::connect(target, None, abrupt).await else {
        churn.connect_failures.fetch_add(1, Ordering::Relaxed);
        return;
    };
    churn.sessions.fetch_add(1, Ordering::Relaxed);
    match roll {
        // A slow reader of the firehose: never reads; the server closes it (1013).
        0..=9 => {
            churn.slow_readers.fetch_add(1, Ordering::Relaxed);
            if ws.welcome_and_subscribe("firehose").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(3000 + dice.below(5000))).await;
            // Closed by then: the 1013 frame reads last if the server was
            // still flushing it (`[queue] close_timeout_ms`), else the socket
            // just ends after what its buffers held.
            match until_closed(&mut ws, Duration::from_millis(500)).await {
                Some(1013) => {
                    churn.slow_closed.fetch_add(1, Ordering::Relaxed);
                    churn.slow_1013_read.fetch_add(1, Ordering::Relaxed);
                }
                Some(0) => {
                    churn.slow_closed.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
            return;
        }
        // An oversized frame: closed with 1009.
        10..=17 => {
            churn.oversized.fetch_add(1, Ordering::Relaxed);
            let mut frame = Vec::new();
            put_frame(&mut frame, 1, &vec![b'x'; 70_000]);
            let _ = ws.write_raw(&frame).await;
            if let Some(1009) = until_closed(&mut ws, Duration::from_secs(5)).await {
                churn.oversized_1009.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        // Garbage after the upgrade: the connection is failed (1002), alone.
        18..=22 => {
            churn.garbage.fetch_add(1, Ordering::Relaxed);
            let junk: Vec<u8> = (0..64 + dice.below(512))
                .map(|_| dice.below(256) as u8)
                .collect();
            let _ = ws.stream.write_all(&junk).await;
            if until_closed(&mut ws, Duration::from_secs(5))
                .await
                .is_some()
            {
                churn.garbage_closed.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        _ => {}
    }
    if ws.next_text().await.is_err() {
        return;
    }
    if roll < 28 {
        // A bad request: an error reply, and the connection stays usable.
        churn.bad_requests.fetch_add(1, Ordering::Relaxed);
        let _ = ws
            .send_text(br#"{"type":"subscribe","topic":"","id":9}"#)
            .await;
        if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(5), ws.next_text()).await {
            if reply.starts_with(br#"{"type":"error""#) {
                churn.bad_request_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    // The ordinary life: a few topics, a publish or two, a while, then leave.
    for i in 0..1 + dice.below(5) {
        let req = format!(
            r#"{{"type":"subscribe","topic":"churn:{}","id":{i}}}"#,
            dice.below(topics)
        );
        if ws.send_text(req.as_bytes()).await.is_err() {
            return;
        }
    }
    for _ in 0..dice.below(3) {
        let req = format!(
            r#"{{"type":"publish","topic":"churn:{}","payload":"hello"}}"#,
            dice.below(topics)
        );
        if ws.send_text(req.as_bytes()).await.is_err() {
            return;
        }
    }
    let stay = Duration::from_millis(dice.below(2000));
    let _ = tokio::time::timeout(stay, async {
        loop {
            if !matches!(ws.read_frames(|_, _| {}).await, Ok(true)) {
                break;
            }
        }
    })
    .await;
    if abrupt {
        churn.resets.fetch_add(1, Ordering::Relaxed);
        // SO_LINGER 0: dropping it sends a reset.
    } else {
        let mut close = Vec::new();
        put_frame(&mut close, 8, &1000u16.to_be_bytes());
        let _ = ws.write_raw(&close).await;
        let _ = until_closed(&mut ws, Duration::from_secs(2)).await;
        churn.clean_closes.fetch_add(1, Ordering::Relaxed);
    }
}

async fn firehose(target: Target, stop: Arc<AtomicBool>) -> Result<(), String> {
    let mut ws = Ws::connect(&target, None, false)
        .await
        .map_err(|e| format!("firehose: {e}"))?;
    ws.next_text().await.map_err(|e| e.to_string())?;
    let payload = "f".repeat(1000);
    let msg = format!(r#"{{"type":"publish","topic":"firehose","payload":"{payload}"}}"#);
    let mut tick = tokio::time::interval(Duration::from_micros(500));
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            _ = tick.tick() => ws.send_text(msg.as_bytes()).await.map_err(|e| format!("firehose: {e}"))?,
            read = ws.read_frames(|_, _| {}) => if !read.map_err(|e| e.to_string())? { return Err("the firehose publisher was closed".into()) },
        }
    }
    Ok(())
}

/// A current-thread tokio runtime: each thread of the generator runs its own.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())
}

fn node_config(redis_port: u16, extra: &str) -> String {
    format!(
        "[limits]\npublish_rate = 0\nmax_message_bytes = 65536\n[server]\nmax_connections = 20000\n[log]\nlevel = \"error\"\n[redis]\nurl = \"redis://127.0.0.1:{redis_port}\"\n{extra}"
    )
}

pub fn soak(a: SoakArgs) -> Result<(), String> {
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let redis = Redises::start(&a.redis_server, 1, false)?;
    let config = TempConfig::write("soak", &node_config(redis.ports()[0], ""))?;
    let binary = sibling("shardcast")?;
    let node = || {
        Spawned::start(&format!(
            "{binary} --listen 127.0.0.1:0 --admin-listen '' --shards {} --config {}",
            a.shards,
            config.0.display()
        ))
    };
    let nodes = [node()?, node()?];
    let mut pids: Vec<u32> = nodes.iter().map(Spawned::pid).collect();
    pids.extend(redis.pids());
    let targets: Vec<Target> = nodes
        .iter()
        .map(|n| Target::parse(&format!("ws://{}/ws", n.addr), None))
        .collect::<Result<_, _>>()?;
    let cpu_start: Vec<f64> = pids
        .iter()
        .map(|p| proc::usage(*p).map_or(0.0, |u| u.cpu_seconds))
        .collect();
    let generator_start = proc::self_cpu_seconds();

    let steady = Arc::new(Steady::default());
    let churn = Arc::new(Churn::default());
    let stop_publishers = Arc::new(AtomicBool::new(false));
    let stop_churn = Arc::new(AtomicBool::new(false));
    let samples: Rc<RefCell<Vec<Sample>>> = Rc::default();
    let epoch = Instant::now();
    // The well-behaved clients get a thread and a runtime of their own: the
    // churn's bursts of handshakes must not delay their reads, or the
    // latency measured would be the generator's.
    let steady_rt = runtime()?;
    let well_behaved = {
        let (targets, steady, stop_publishers) = (targets.clone(), steady.clone(), stop_publishers.clone());
        let (count, topics, rate) = (a.steady, a.topics, a.rate);
        std::thread::spawn(move || -> Result<(Vec<u64>, f64), String> {
            let cpu = proc::own_thread_cpu_seconds();
            let stop_subscribers = Arc::new(AtomicBool::new(false));
            let published = tokio::task::LocalSet::new().block_on(&steady_rt, async {
                let mut subscribers = Vec::new();
                for i in 0..count {
                    let task = steady_subscriber(
                        targets[i % 2].clone(),
                        format!("steady:{}", i % topics),
                        (i % 2) as u64,
                        steady.clone(),
                        stop_subscribers.clone(),
                        epoch,
                    );
                    subscribers.push(tokio::task::spawn_local(task));
                }
                // Every subscriber has its ack before the first publish (they are owed everything).
                tokio::time::sleep(Duration::from_secs(2)).await;
                let mut publishers = Vec::new();
                for t in 0..topics {
                    for (n, target) in targets.iter().enumerate() {
                        let task = steady_publisher(
                            target.clone(),
                            (t * 2 + n) as u64 + 1,
                            format!("steady:{t}"),
                            rate,
                            stop_publishers.clone(),
                            epoch,
                        );
                        publishers.push((t, tokio::task::spawn_local(task)));
                    }
                }
                let mut published = vec![0u64; topics];
                for (t, p) in publishers {
                    published[t] += p.await.map_err(|e| e.to_string())??;
                }
                // What is still on its way across nodes arrives before the subscribers stop.
                tokio::time::sleep(Duration::from_secs(2)).await;
                stop_subscribers.store(true, Ordering::Relaxed);
                for s in subscribers {
                    s.await.map_err(|e| e.to_string())??;
                }
                Ok::<_, String>(published)
            })?;
            Ok((published, proc::own_thread_cpu_seconds() - cpu))
        })
    };
    let rt = runtime()?;
    let local = tokio::task::LocalSet::new();
    let outcome: Result<(), String> = local.block_on(&rt, async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let sampler = {
            let samples = samples.clone();
            let pids = pids.clone();
            let phase_of = {
                let (settle, duration) = (a.settle as f64, a.duration as f64);
                move |t: f64| {
                    if t < settle {
                        "before"
                    } else if t < settle + duration {
                        "churn"
                    } else {
                        "after"
                    }
                }
            };
            tokio::task::spawn_local(async move {
                let start = Instant::now();
                loop {
                    let t = start.elapsed().as_secs_f64();
                    let rss = pids
                        .iter()
                        .map(|p| proc::usage(*p).map_or(0, |u| u.rss_bytes))
                        .collect();
                    let fds = pids.iter().map(|p| open_fds(*p)).collect();
                    samples.borrow_mut().push(Sample {
                        t,
                        phase: phase_of(t),
                        rss,
                        fds,
                    });
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            })
        };
        tokio::time::sleep(Duration::from_secs(a.settle)).await;
        eprintln!(
            "soak: churn starts: {} connections at a time for {} s",
            a.churners, a.duration
        );
        let hose = tokio::task::spawn_local(firehose(targets[0].clone(), stop_churn.clone()));
        let mut churners = Vec::new();
        for c in 0..a.churners {
            let (targets, churn, stop) = (targets.clone(), churn.clone(), stop_churn.clone());
            churners.push(tokio::task::spawn_local(async move {
                let mut dice = Dice::new(c as u64 + 1);
                // Spread the first connects over a second.
                tokio::time::sleep(Duration::from_millis(dice.below(1000))).await;
                while !stop.load(Ordering::Relaxed) {
                    churn_once(&targets, &mut dice, &churn, 500).await;
                }
            }));
        }
        let churn_end = Instant::now() + Duration::from_secs(a.duration);
        while Instant::now() < churn_end {
            tokio::time::sleep(Duration::from_secs(10)).await;
            eprintln!(
                "soak: {:.0} s: {} sessions",
                epoch.elapsed().as_secs_f64(),
                churn.sessions.load(Ordering::Relaxed)
            );
        }
        stop_churn.store(true, Ordering::Relaxed);
        for c in churners {
            let _ = c.await;
        }
        hose.await.map_err(|e| e.to_string())??;
        eprintln!("soak: churn stopped; settling for {} s", a.settle);
        tokio::time::sleep(Duration::from_secs(a.settle)).await;
        stop_publishers.store(true, Ordering::Relaxed);
        sampler.abort();
        Ok(())
    });
    // Stop the well-behaved clients even when the churn failed.
    stop_publishers.store(true, Ordering::Relaxed);
    let well_behaved = well_behaved.join().map_err(|_| "the well-behaved clients' thread panicked".to_string());
    outcome?;
    let (published, steady_cpu) = well_behaved??;
    let seconds = epoch.elapsed().as_secs_f64();
    let cpu: Vec<f64> = pids
        .iter()
        .zip(&cpu_start)
        .map(|(p, s)| proc::usage(*p).map_or(0.0, |u| u.cpu_seconds) - s)
        .collect();
    let generator_cpu = proc::self_cpu_seconds() - generator_start;
    drop(nodes);

    // Owed: every publish to a topic, to each of its subscribers.
    let owed: u64 = (0..a.steady).map(|i| published[i % a.topics]).sum();
    let delivered = steady.delivered.load(Ordering::Relaxed);
    let samples = samples.borrow();
    write_samples(&a.out.join("samples.csv"), &samples)?;
    plot(
        &a.out.join("soak.svg"),
        &samples,
        a.settle as f64,
        a.duration as f64,
    )?;
    let mean = |phase: &str, i: usize, of: fn(&Sample) -> &Vec<u64>| {
        let v: Vec<u64> = samples
            .iter()
            .filter(|s| s.phase == phase)
            .map(|s| of(s)[i])
            .collect();
        // The last half of a phase: settled, not the transition into it.
        let tail = &v[v.len() / 2..];
        tail.iter().sum::<u64>() as f64 / tail.len().max(1) as f64
    };
    let peak = |i: usize, of: fn(&Sample) -> &Vec<u64>| {
        samples.iter().map(|s| of(s)[i]).max().unwrap_or(0) as f64
    };
    let latency = steady.latency.lock().unwrap();
    let quantiles = |h: &Option<Histogram<u64>>| {
        h.as_ref().map_or("-".to_string(), |h| {
            let ms = |q| h.value_at_quantile(q) as f64 / 1e6;
            format!("{:.2} / {:.2} / {:.2}", ms(0.5), ms(0.99), ms(1.0))
        })
    };
    let c = &*churn;
    let load = |x: &AtomicU64| x.load(Ordering::Relaxed).to_string();
    println!(
        "soak: two nodes ({} shard(s) each) and one redis-server; {} churning connections for {} s, {} well-behaved subscribers on {} topics, 2 publishers per topic at {} msg/s; {:.0} s in all",
        a.shards, a.churners, a.duration, a.steady, a.topics, a.rate, seconds
    );
    print_table(
        &["well-behaved clients", "value"],
        &[
            vec!["messages owed".into(), owed.to_string()],
            vec!["delivered".into(), delivered.to_string()],
            vec![
                "lost (owed - delivered)".into(),
                owed.saturating_sub(delivered).to_string(),
            ],
            vec!["gaps seen".into(), load(&steady.missing)],
            vec![
                "duplicates or out of order".into(),
                load(&steady.duplicates),
            ],
            vec!["latency p50 / p99 / max (ms), same node".into(), quantiles(&latency[0])],
            vec!["latency p50 / p99 / max (ms), across nodes".into(), quantiles(&latency[1])],
        ],
    );
    print_table(
        &["churn", "sessions", "answered as documented"],
        &[
            vec![
                "all (connect failures)".into(),
                load(&c.sessions),
                format!("({} failed to connect)", load(&c.connect_failures)),
            ],
            vec![
                "left cleanly / with a reset".into(),
                format!("{} / {}", load(&c.clean_closes), load(&c.resets)),
                "-".into(),
            ],
            vec![
                "slow readers (closed; 1013 frame read)".into(),
                load(&c.slow_readers),
                format!("{}; {}", load(&c.slow_closed), load(&c.slow_1013_read)),
            ],
            vec![
                "oversized frames (closed 1009)".into(),
                load(&c.oversized),
                load(&c.oversized_1009),
            ],
            vec![
                "garbage bytes (closed)".into(),
                load(&c.garbage),
                load(&c.garbage_closed),
            ],
            vec![
                "bad requests (error reply)".into(),
                load(&c.bad_requests),
                load(&c.bad_request_errors),
            ],
        ],
    );
    let names = ["node A", "node B", "redis-server"];
    let mut rows = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (before, after) = (mean("before", i, |s| &s.rss), mean("after", i, |s| &s.rss));
        rows.push(vec![
            name.to_string(),
            format!("{:.1}", before / 1048576.0),
            format!("{:.1}", peak(i, |s| &s.rss) / 1048576.0),
            format!(
                "{:.1} ({:+.1}%)",
                after / 1048576.0,
                (after / before - 1.0) * 100.0
            ),
            format!(
                "{:.0} / {:.0} / {:.0}",
                mean("before", i, |s| &s.fds),
                peak(i, |s| &s.fds),
                mean("after", i, |s| &s.fds)
            ),
            format!("{:.0}%", cpu[i] / seconds * 100.0),
        ]);
    }
    rows.push(vec![
        "generator (of which well-behaved clients)".into(),
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
        format!(
            "{:.0}% ({:.0}%)",
            generator_cpu / seconds * 100.0,
            steady_cpu / seconds * 100.0
        ),
    ]);
    print_table(
        &[
            "process",
            "RSS before (MiB)",
            "peak",
            "after churn",
            "fds before / peak / after",
            "CPU (of a core)",
        ],
        &rows,
    );
    println!(
        "samples: {}, plot: {}",
        a.out.join("samples.csv").display(),
        a.out.join("soak.svg").display()
    );
    if owed != delivered || steady.duplicates.load(Ordering::Relaxed) > 0 {
        return Err(format!(
            "well-behaved clients lost {} and saw {} duplicates",
            owed.saturating_sub(delivered),
            load(&steady.duplicates)
        ));
    }
    Ok(())
}

fn write_samples(path: &Path, samples: &[Sample]) -> Result<(), String> {
    let mut f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let io = |e: std::io::Error| e.to_string();
    writeln!(f, "seconds,phase,node_a_rss_bytes,node_b_rss_bytes,redis_rss_bytes,node_a_fds,node_b_fds,redis_fds").map_err(io)?;
    for s in samples {
        writeln!(
            f,
            "{:.1},{},{},{},{},{},{},{}",
            s.t, s.phase, s.rss[0], s.rss[1], s.rss[2], s.fds[0], s.fds[1], s.fds[2]
        )
        .map_err(io)?;
    }
    Ok(())
}

/// RSS (MiB, left) and open descriptors (right) of both nodes over time,
/// the churn phase marked.
fn plot(path: &Path, samples: &[Sample], settle: f64, duration: f64) -> Result<(), String> {
    use plotters::prelude::*;
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let end = samples.last().map_or(1.0, |s| s.t).max(1.0);
    let max_rss = samples
        .iter()
        .flat_map(|s| &s.rss[..2])
        .copied()
        .max()
        .unwrap_or(1) as f64
        / 1048576.0
        * 1.15;
    let max_fds = samples
        .iter()
        .flat_map(|s| &s.fds[..2])
        .copied()
        .max()
        .unwrap_or(1) as f64
        * 1.15;
    let root = SVGBackend::new(path, (1000, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "soak: churn from {settle:.0} s to {:.0} s",
                settle + duration
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0f64..end, 0f64..max_rss)
        .map_err(|x| e(&x))?
        .set_secondary_coord(0f64..end, 0f64..max_fds);
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("RSS (MiB)")
        .draw()
        .map_err(|x| e(&x))?;
    chart
        .configure_secondary_axes()
        .y_desc("open descriptors")
        .draw()
        .map_err(|x| e(&x))?;
    for (i, (name, color)) in [("node A RSS", &BLUE), ("node B RSS", &RED)]
        .into_iter()
        .enumerate()
    {
        chart
            .draw_series(LineSeries::new(
                samples.iter().map(|s| (s.t, s.rss[i] as f64 / 1048576.0)),
                color,
            ))
            .map_err(|x| e(&x))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    for (i, (name, color)) in [("node A fds", &CYAN), ("node B fds", &MAGENTA)]
        .into_iter()
        .enumerate()
    {
        chart
            .draw_secondary_series(LineSeries::new(
                samples.iter().map(|s| (s.t, s.fds[i] as f64)),
                color,
            ))
            .map_err(|x| e(&x))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// One normal connect: TCP, upgrade, welcome. Its time in µs.
async fn probe(target: &Target) -> Result<u64, String> {
    let start = Instant::now();
    let mut ws = Ws::connect(target, None, true)
        .await
        .map_err(|e| format!("probe connect: {e}"))?;
    ws.next_text()
        .await
        .map_err(|e| format!("probe welcome: {e}"))?;
    Ok(start.elapsed().as_micros() as u64)
}

async fn probes(target: &Target, n: usize) -> Result<Histogram<u64>, String> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    for _ in 0..n {
        let _ = h.record(probe(target).await?.max(1));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(h)
}

/// A slow client: the upgrade request a byte a second, until the server
/// closes. Returns how long the server let it live (None: never closed).
async fn slow_client(addr: std::net::SocketAddr, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let mut sink = [0u8; 512];
    for byte in request.iter().cycle() {
        if start.elapsed() > limit {
            return None;
        }
        if s.write_all(&[*byte]).await.is_err() {
            return Some(start.elapsed());
        }
        // Wait a second for the next byte, noticing a close meanwhile.
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut sink)).await {
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    None
}

pub fn slowloris(a: SlowlorisArgs) -> Result<(), String> {
    let config = TempConfig::write(
        "slowloris",
        &format!(
            "[server]\nhandshake_timeout_ms = {}\nmax_connections = {}\n[log]\nlevel = \"error\"\n",
            a.handshake_timeout_ms,
            a.connections + 1000
        ),
    )?;
    let binary = sibling("shardcast")?;
    let server = Spawned::start(&format!(
        "{binary} --listen 127.0.0.1:0 --admin-listen '' --shards {} --config {}",
        a.shards,
        config.0.display()
    ))?;
    let target = Target::parse(&format!("ws://{}/ws", server.addr), None)?;
    let addr = target.addr;
    let timeout = Duration::from_millis(a.handshake_timeout_ms);
    let rt = runtime()?;
    let idle = rt.block_on(probes(&target, a.probes))?;
    // The slow clients get a thread and a runtime of their own, so that their
    // once-a-second bursts of writes never delay the probes' own event loop:
    // what the probes measure is the server.
    let connections = a.connections;
    let slow_runtime = runtime()?;
    let slow = std::thread::spawn(move || {
        let local = tokio::task::LocalSet::new();
        local.block_on(&slow_runtime, async {
            let clients: Vec<_> = (0..connections)
                .map(|_| tokio::task::spawn_local(slow_client(addr, timeout * 4 + Duration::from_secs(10))))
                .collect();
            let mut lived = Histogram::<u64>::new_with_bounds(1, 600_000, 3).expect("bounds");
            let mut never = 0;
            for c in clients {
                match c.await.map_err(|e| e.to_string())? {
                    Some(d) => {
                        let _ = lived.record((d.as_millis() as u64).max(1));
                    }
                    None => never += 1,
                }
            }
            if never > 0 {
                return Err(format!("{never} slow connections were never closed"));
            }
            Ok::<_, String>(lived)
        })
    });
    // Let every slow client connect and start dribbling.
    std::thread::sleep(Duration::from_millis(1500));
    eprintln!(
        "slowloris: {} slow connections open (server holds {} descriptors)",
        a.connections,
        open_fds(server.pid())
    );
    let (cpu_before, at) = (proc::usage(server.pid()).map_or(0.0, |u| u.cpu_seconds), Instant::now());
    let loaded = rt.block_on(probes(&target, a.probes))?;
    let server_cpu = (proc::usage(server.pid()).map_or(0.0, |u| u.cpu_seconds) - cpu_before) / at.elapsed().as_secs_f64();
    let lived = slow.join().map_err(|_| "the slow clients' thread panicked".to_string())??;
    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    println!(
        "slowloris: {} connections sending their upgrade a byte a second; handshake_timeout_ms = {}; {} probes per phase, one at a time",
        a.connections, a.handshake_timeout_ms, a.probes
    );
    print_table(
        &["normal connect (to welcome)", "p50 ms", "p99 ms"],
        &[
            vec![
                "idle server".into(),
                format!("{:.2}", q(&idle, 0.5)),
                format!("{:.2}", q(&idle, 0.99)),
            ],
            vec![
                "under slowloris".into(),
                format!("{:.2}", q(&loaded, 0.5)),
                format!("{:.2}", q(&loaded, 0.99)),
            ],
            vec![
                "ratio".into(),
                format!("{:.2}x", q(&loaded, 0.5) / q(&idle, 0.5)),
                format!("{:.2}x", q(&loaded, 0.99) / q(&idle, 0.99)),
            ],
        ],
    );
    println!("server CPU while the slow connections dribbled and the probes ran: {:.0}% of a core", server_cpu * 100.0);
    println!(
        "slow connections closed after: min {} ms, p50 {} ms, max {} ms (handshake_timeout_ms {})",
        lived.min(),
        lived.value_at_quantile(0.5),
        lived.max(),
        a.handshake_timeout_ms
    );
    Ok(())
}
