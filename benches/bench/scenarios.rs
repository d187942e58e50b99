//! The load scenarios. Everything runs on one thread (a tokio current-thread
//! runtime with a `LocalSet`), so the generator's cost is one core at most
//! and shared state is plain `Cell`/`RefCell`.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Notify;
use tokio::task::spawn_local;

use crate::progress::Progress;
use crate::report::{Latency, Report, Window};
use crate::fallback::{self, Transport};
use crate::ws::{field, put_frame, Target, Ws, OP_TEXT};
use crate::{ApiArgs, ConnectArgs, EchoArgs, FanoutArgs, IdleArgs, PublishArgs, RecoverArgs, RoomsArgs, Run};

/// Connections opened at once while setting up.
const SETUP_PARALLELISM: usize = 256;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

/// The i-th source address: 127.0.0.2, 127.0.0.3, ... (`sources` of them),
/// or the kernel's choice when `sources` is 0.
pub fn source(i: usize, sources: usize, offset: usize) -> Option<IpAddr> {
    (sources > 0).then(|| {
        let n = 2 + ((i + offset) % sources) as u32;
        IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + n))
    })
}

/// Runs `open(i)` for i in 0..n, `SETUP_PARALLELISM` at a time; their results in order.
async fn in_batches<T, F, Fut>(n: usize, open: F) -> Result<Vec<T>, String>
where
    T: 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>> + 'static,
{
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let batch: Vec<_> = (i..(i + SETUP_PARALLELISM).min(n)).map(|j| spawn_local(open(j))).collect();
        for task in batch {
            let conn = task.await.map_err(|e| e.to_string())?.map_err(|e| format!("connection {i}: {e}"))?;
            out.push(conn);
        }
        i = (i + SETUP_PARALLELISM).min(n);
    }
    Ok(out)
}

/// Opens `n` connections, `SETUP_PARALLELISM` at a time; `prepare` runs on
/// each (e.g. welcome + subscribe).
async fn connect_many<F, Fut>(run: &Run, target: &Target, n: usize, prepare: F) -> Result<Vec<Ws>, String>
where
    F: Fn(usize, Ws) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = std::io::Result<Ws>> + 'static,
{
    let (sources, offset) = (run.sources, run.source_offset);
    in_batches(n, |j| {
        let target = target.clone();
        let prepare = prepare.clone();
        let src = source(j, sources, offset);
        async move {
            let ws = Ws::connect(&target, src, false).await?;
            prepare(j, ws).await
        }
    })
    .await
}

/// A subscriber: a WebSocket or a fallback session (`--transport`).
pub enum Sub {
    Ws(Ws),
    Fallback(fallback::Session),
}

impl Sub {
    /// Calls `on_text(json)` for every text frame of one read (see
    /// `Ws::read_frames`); false once the connection or stream is over.
    pub async fn read_texts(&mut self, mut on_text: impl FnMut(&[u8])) -> std::io::Result<bool> {
        match self {
            Sub::Ws(ws) => {
                ws.read_frames(|op, text| {
                    if op == OP_TEXT {
                        on_text(text)
                    }
                })
                .await
            }
            Sub::Fallback(s) => s.read_frames(on_text).await,
        }
    }

    /// Bytes read from the socket since the upgrade or the response head.
    pub fn bytes_read(&self) -> u64 {
        match self {
            Sub::Ws(ws) => ws.bytes_read,
            Sub::Fallback(s) => s.bytes_read,
        }
    }
}

/// Refuses what the fallback clients do not do (TLS, compression).
fn check_fallback(run: &Run, transport: Transport) -> Result<(), String> {
    if transport != Transport::WebSocket && (run.target.tls.is_some() || run.target.deflate) {
        return Err(format!("--transport {}: plain http:// only (no --ca, no --deflate: fallback sessions are not compressed)", transport.name()));
    }
    Ok(())
}

/// What a subscriber on `transport` connects to, for the report.
fn subscriber_url(run: &Run, transport: Transport) -> String {
    match transport {
        Transport::WebSocket => run.url.clone(),
        Transport::HttpStream => format!("http://{}{}", run.target.addr, fallback::STREAM_PATH),
        Transport::Sse => format!("http://{}{}", run.target.addr, fallback::SSE_PATH),
    }
}

/// Opens `n` subscribers on `transport`, subscriber i to `topic(i)`: a
/// WebSocket reads its welcome and subscribes; a fallback session opens
/// its stream, reads its welcome, and subscribes with one
/// `POST /emulation`. Each waits for its ack.
async fn subscribers<F>(run: &Run, transport: Transport, n: usize, topic: F) -> Result<Vec<Sub>, String>
where
    F: Fn(usize) -> String + Clone + 'static,
{
    check_fallback(run, transport)?;
    if transport == Transport::WebSocket {
        let subs = connect_many(run, &run.target, n, move |i, mut ws| {
            let t = topic(i);
            async move {
                ws.welcome_and_subscribe(&t).await?;
                Ok(ws)
            }
        })
        .await?;
        return Ok(subs.into_iter().map(Sub::Ws).collect());
    }
    // A token in the URL (`?token=`) goes on the stream's request as it is.
    let query = run.target.path.find('?').map_or(String::new(), |at| run.target.path[at..].to_string());
    let (addr, sources, offset) = (run.target.addr, run.sources, run.source_offset);
    in_batches(n, |j| {
        let (query, t, src) = (query.clone(), topic(j), source(j, sources, offset));
        async move {
            let mut s = fallback::Session::open(addr, src, transport, &query).await?;
            s.subscribe(&t).await?;
            Ok(Sub::Fallback(s))
        }
    })
    .await
}

/// `{"s":SEQ,"p":PUB,"t":NANOS,"x":"..."}` padded to `size` bytes.
/// A JSON payload of `size` bytes carrying the sequence number, publisher
/// and send time, padded with words (text that compresses like text, not a
/// run of one letter, so compression ratios mean something).
fn payload(seq: u64, publisher: usize, size: usize) -> String {
    const WORDS: [&str; 16] = [
        "order", "paid", "price", "update", "user", "room", "score", "level", "alpha", "delta", "event", "stream", "value",
        "status", "ready", "queued",
    ];
    let mut p = format!(r#"{{"s":{seq},"p":{publisher},"t":{},"x":""#, now_ns());
    let target = size.saturating_sub(2);
    let mut state = seq.wrapping_mul(6364136223846793005).wrapping_add(publisher as u64 | 1);
    while p.len() < target {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let word = WORDS[(state >> 60) as usize];
        let take = word.len().min(target - p.len());
        p.push_str(&word[..take]);
        if p.len() < target {
            p.push(' ');
        }
    }
    p.push_str("\"}");
    p
}

fn publish_frame(out: &mut Vec<u8>, topic: &str, payload: &str) {
    let req = format!(r#"{{"type":"publish","topic":"{topic}","payload":{payload}}}"#);
    put_frame(out, OP_TEXT, req.as_bytes());
}

/// Per-subscriber bookkeeping of sequence numbers from each publisher.
struct SeqCheck {
    /// Next expected sequence number per publisher.
    next: RefCell<Vec<u64>>,
    lost: Cell<u64>,
    duplicated: Cell<u64>,
    out_of_order: Cell<u64>,
}

impl SeqCheck {
    fn new(publishers: usize) -> SeqCheck {
        SeqCheck { next: RefCell::new(vec![0; publishers]), lost: Cell::new(0), duplicated: Cell::new(0), out_of_order: Cell::new(0) }
    }

    fn see(&self, publisher: usize, seq: u64) {
        let mut next = self.next.borrow_mut();
        let Some(expected) = next.get_mut(publisher) else { return };
        match seq.cmp(expected) {
            std::cmp::Ordering::Equal => *expected += 1,
            std::cmp::Ordering::Greater => {
                self.lost.set(self.lost.get() + (seq - *expected));
                *expected = seq + 1;
            }
            std::cmp::Ordering::Less if seq + 1 == *expected => self.duplicated.set(self.duplicated.get() + 1),
            std::cmp::Ordering::Less => {
                // Counted as lost when skipped; it arrived after all.
                self.out_of_order.set(self.out_of_order.get() + 1);
                self.lost.set(self.lost.get().saturating_sub(1));
            }
        }
    }
}

/// Shared by the subscriber readers of one run.
struct Deliveries {
    total: Cell<u64>,
    per_publisher: Vec<Cell<u64>>,
    hist: RefCell<Histogram<u64>>,
    recording: Cell<bool>,
    /// Publishers waiting for deliveries (`--max` window).
    room: Notify,
}

impl Deliveries {
    fn new(publishers: usize) -> Rc<Deliveries> {
        Rc::new(Deliveries {
            total: Cell::new(0),
            per_publisher: (0..publishers).map(|_| Cell::new(0)).collect(),
            hist: RefCell::new(new_hist()),
            recording: Cell::new(false),
            room: Notify::new(),
        })
    }

    /// Records one message frame; returns (publisher, seq) when it is ours.
    fn record(&self, text: &[u8]) -> Option<(usize, u64)> {
        if !text.starts_with(br#"{"type":"message""#) {
            return None;
        }
        let seq = field(text, br#""s":"#)?;
        let publisher = field(text, br#""p":"#)? as usize;
        let sent = field(text, br#""t":"#)?;
        if self.recording.get() {
            let _ = self.hist.borrow_mut().record(now_ns().saturating_sub(sent).max(1));
        }
        self.total.set(self.total.get() + 1);
        if let Some(c) = self.per_publisher.get(publisher) {
            c.set(c.get() + 1);
        }
        self.room.notify_waiters();
        Some((publisher, seq))
    }
}

/// Warm-up, then the measured window; returns the window's deliveries and measurements.
async fn measure(run: &Run, progress: &Progress, counter: impl Fn() -> u64, recording: Option<&Cell<bool>>) -> (u64, crate::report::Measured) {
    progress.phase("warm-up");
    tick_until(progress, Instant::now() + run.warmup, &counter).await;
    if let Some(r) = recording {
        r.set(true);
    }
    let window = Window::start(run.server_pid, &run.also_pids);
    let before = counter();
    progress.phase("measuring");
    tick_until(progress, Instant::now() + run.duration, &counter).await;
    let ops = counter() - before;
    if let Some(r) = recording {
        r.set(false);
    }
    (ops, window.finish())
}

async fn tick_until(progress: &Progress, until: Instant, counter: &impl Fn() -> u64) {
    let mut last = (Instant::now(), counter());
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200).min(until.saturating_duration_since(Instant::now()))).await;
        let now = (Instant::now(), counter());
        let rate = (now.1 - last.1) as f64 / now.0.duration_since(last.0).as_secs_f64().max(1e-9);
        progress.rate(rate);
        last = now;
    }
}

fn with_latency(mut r: Report, hist: &Histogram<u64>) -> Report {
    r.latency = Latency::from_hist(hist);
    r
}

pub async fn fanout(run: &Run, a: &FanoutArgs, progress: &Progress) -> Result<(Report, Histogram<u64>), String> {
    let target = run.target.clone();
    let topics = a.topics.max(1);
    let prefix = a.topic_prefix.clone();
    let topic = |i: usize| format!("{prefix}{}", i % topics);
    progress.phase("connecting subscribers");
    let sub_prefix = a.topic_prefix.clone();
    let subs = subscribers(run, a.transport, a.subscribers, move |i| format!("{sub_prefix}{}", i % topics)).await?;
    let deliveries = Deliveries::new(a.publishers);
    // Bytes the subscribers read while measuring: the framing's cost on the wire.
    let wire_bytes = Rc::new(Cell::new(0u64));
    let mut checks = Vec::new();
    for mut sub in subs {
        let check = Rc::new(SeqCheck::new(a.publishers));
        checks.push(check.clone());
        let (d, wire_bytes) = (deliveries.clone(), wire_bytes.clone());
        spawn_local(async move {
            let mut read = sub.bytes_read();
            while let Ok(true) = sub
                .read_texts(|text| {
                    if let Some((p, s)) = d.record(text) {
                        check.see(p, s);
                    }
                })
                .await
            {
                if d.recording.get() {
                    wire_bytes.set(wire_bytes.get() + sub.bytes_read() - read);
                }
                read = sub.bytes_read();
            }
        });
    }
    progress.phase("connecting publishers");
    let publish_target = match &a.publish_url {
        Some(url) => Target::parse(url, run.ca.as_deref())?,
        None => target.clone(),
    };
    let publishers = connect_many(run, &publish_target, a.publishers, |_, mut ws| async move {
        ws.next_text().await?;
        Ok(ws)
    })
    .await?;
    if a.publish_url.is_some() {
        // Publishing from another node: let its bridge's SUBSCRIBE reach Redis.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let stop = Rc::new(Cell::new(false));
    let sent: Rc<Vec<Cell<u64>>> = Rc::new((0..a.publishers).map(|_| Cell::new(0)).collect());
    let mut tasks = Vec::new();
    for (p, ws) in publishers.into_iter().enumerate() {
        let subscribers_of_topic = (0..a.subscribers).filter(|i| i % topics == p % topics).count() as u64;
        let t = topic(p);
        let (stop, sent, d) = (stop.clone(), sent.clone(), deliveries.clone());
        let (size, window) = (a.payload, a.window as u64);
        let rate = a.rate.map(|r| r / a.publishers as f64);
        tasks.push(spawn_local(async move {
            let mut ws = ws;
            let mut buf = Vec::with_capacity(64 * 1024);
            let started = Instant::now();
            // The reader half is not needed: publishers are not subscribed.
            while !stop.get() {
                let n = sent[p].get();
                let batch = match rate {
                    Some(r) => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        let due = (started.elapsed().as_secs_f64() * r) as u64;
                        due.saturating_sub(n).min(10_000)
                    }
                    None => {
                        // --max: at most `window` messages per publisher in flight.
                        let done = d.per_publisher[p].get().checked_div(subscribers_of_topic).unwrap_or(n);
                        let room = (done + window).saturating_sub(n).min(64);
                        if room == 0 {
                            let _ = tokio::time::timeout(Duration::from_millis(50), d.room.notified()).await;
                            continue;
                        }
                        room
                    }
                };
                buf.clear();
                for i in 0..batch {
                    publish_frame(&mut buf, &t, &payload(n + i, p, size));
                }
                if batch > 0 {
                    if ws.write_raw(&buf).await.is_err() {
                        break;
                    }
                    sent[p].set(n + batch);
                }
            }
            ws
        }));
    }
    // The dashboard's polling, to see that it does not slow fan-out down.
    let poller = match (a.poll_admin_hz > 0.0, &run.admin) {
        (false, _) => None,
        (true, Some(admin)) => Some(spawn_local(poll_dashboard(admin.clone(), a.poll_admin_hz, None, stop.clone()))),
        (true, None) => return Err("--poll-admin-hz needs the admin listener: --admin HOST:PORT, or --spawn a server that has one".into()),
    };
    let churned = (a.churn_rate > 0.0).then(|| {
        let counts = Rc::new(Churned::default());
        spawn_local(churn(run.target.clone(), a.churn_rate, a.churn_prefix.clone(), (run.sources, run.source_offset), stop.clone(), counts.clone()));
        counts
    });
    let d = deliveries.clone();
    let sends_before = send_counters(run.admin.as_deref()).await;
    let (ops, m) = measure(run, progress, move || d.total.get(), Some(&deliveries.recording)).await;
    let sends_after = send_counters(run.admin.as_deref()).await;
    stop.set(true);
    let polls = match poller {
        Some(p) => Some(p.await.map_err(|e| e.to_string())?),
        None => None,
    };
    let mut keep = Vec::new();
    for t in tasks {
        keep.push(t.await.map_err(|e| e.to_string())?);
    }
    // Drain: wait until deliveries stop arriving.
    progress.phase("draining");
    let mut last = u64::MAX;
    let deadline = Instant::now() + Duration::from_secs(5);
    while deliveries.total.get() != last && Instant::now() < deadline {
        last = deliveries.total.get();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut report = Report::new("fanout", &subscriber_url(run, a.transport), m, "deliveries", ops).transport(a.transport);
    if let (Some((frames0, writes0)), Some((frames1, writes1))) = (sends_before, sends_after) {
        if writes1 > writes0 {
            // Over the warm-up and the window: frames per sendmsg, which
            // the window and the readers' pace decide, and with them the
            // CPU per delivery.
            report = report.detail("server_frames_per_send", ((frames1 - frames0) / (writes1 - writes0) * 100.0).round() / 100.0);
        }
    }
    if ops > 0 {
        report = report.detail("subscriber_bytes_per_delivery", (wire_bytes.get() as f64 / ops as f64 * 10.0).round() / 10.0);
    }
    if let Some(polls) = polls {
        report = report.detail("dashboard_polls", polls as f64).detail("poll_admin_hz", a.poll_admin_hz);
    }
    if let Some(c) = churned {
        let seconds = match (c.started.get(), c.ended.get()) {
            (Some(start), Some(end)) => end.duration_since(start).as_secs_f64().max(1e-9),
            _ => f64::INFINITY,
        };
        report = report
            .detail("churn_rate", a.churn_rate)
            .detail("churn_cycles_per_second", (c.done.get() as f64 / seconds).round())
            .detail("churn_failed", c.failed.get() as f64)
            .detail("churn_behind", c.behind.get() as f64);
    }
    for (i, check) in checks.iter().enumerate() {
        let next = check.next.borrow();
        for (p, sent) in sent.iter().enumerate() {
            if p % topics == i % topics {
                report.lost += sent.get().saturating_sub(next[p]);
            }
        }
        report.lost += check.lost.get();
        report.duplicated += check.duplicated.get();
        report.out_of_order += check.out_of_order.get();
    }
    let hist = deliveries.hist.borrow().clone();
    let (wire, inflated) = crate::ws::DEFLATE_BYTES.with(|b| b.get());
    if wire > 0 {
        report = report.detail("compression_ratio", inflated as f64 / wire as f64);
    }
    let report = with_latency(report, &hist)
        .detail("subscribers", a.subscribers as f64)
        .detail("topics", topics as f64)
        .detail("publishers", a.publishers as f64)
        .detail("payload_bytes", a.payload as f64)
        .detail("published", sent.iter().map(Cell::get).sum::<u64>() as f64);
    let report = match a.rate {
        Some(rate) => report.detail("rate", rate),
        None => report.detail("window", a.window as f64),
    };
    drop(keep);
    Ok((report, hist))
}

/// What the churning connections of `fanout --churn-rate` did.
#[derive(Default)]
struct Churned {
    /// The churn's span: from its start to `stop`.
    started: Cell<Option<Instant>>,
    ended: Cell<Option<Instant>>,
    done: Cell<u64>,
    failed: Cell<u64>,
    /// Cycles not started on time because `CHURN_INFLIGHT` were under way.
    behind: Cell<u64>,
}

/// Churn cycles under way at once, at most.
const CHURN_INFLIGHT: usize = 256;

/// Until `stop`: `rate` times a second, a connection connects, is welcomed,
/// subscribes to a topic of its own and closes (a reset after its close
/// frame: no TIME_WAIT).
async fn churn(target: Target, rate: f64, prefix: String, (sources, offset): (usize, usize), stop: Rc<Cell<bool>>, counts: Rc<Churned>) {
    let started = Instant::now();
    counts.started.set(Some(started));
    let inflight = Rc::new(Cell::new(0usize));
    let mut n = 0u64;
    while !stop.get() {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while n < due {
            if inflight.get() >= CHURN_INFLIGHT {
                counts.behind.set(counts.behind.get() + (due - n));
                n = due;
                break;
            }
            let (target, topic, src) = (target.clone(), format!("{prefix}{n}"), source(n as usize, sources, offset));
            let (inflight, counts) = (inflight.clone(), counts.clone());
            inflight.set(inflight.get() + 1);
            n += 1;
            spawn_local(async move {
                let cycle = async {
                    let mut ws = Ws::connect(&target, src, true).await?;
                    ws.welcome_and_subscribe(&topic).await?;
                    let mut close = Vec::new();
                    put_frame(&mut close, crate::ws::OP_CLOSE, &1000u16.to_be_bytes());
                    ws.write_raw(&close).await
                };
                match cycle.await {
                    Ok(()) => counts.done.set(counts.done.get() + 1),
                    Err(_) => counts.failed.set(counts.failed.get() + 1),
                }
                inflight.set(inflight.get() - 1);
            });
        }
    }
    counts.ended.set(Some(Instant::now()));
}

pub async fn rooms(run: &Run, a: &RoomsArgs, progress: &Progress) -> Result<(Report, Histogram<u64>), String> {
    let size = a.room_size.max(1);
    progress.phase("connecting clients");
    let clients = connect_many(run, &run.target, a.clients, move |i, mut ws| async move {
        ws.welcome_and_subscribe(&format!("room-{}", i / size)).await?;
        Ok(ws)
    })
    .await?;
    let deliveries = Deliveries::new(a.clients);
    let checks: Vec<Rc<SeqCheck>> = (0..a.clients).map(|_| Rc::new(SeqCheck::new(a.clients))).collect();
    let stop = Rc::new(Cell::new(false));
    let sent: Rc<Vec<Cell<u64>>> = Rc::new((0..a.clients).map(|_| Cell::new(0)).collect());
    let interval = Duration::from_secs_f64(1.0 / a.msg_rate.max(0.001));
    for (i, mut ws) in clients.into_iter().enumerate() {
        let (stop, sent, d, check) = (stop.clone(), sent.clone(), deliveries.clone(), checks[i].clone());
        let topic = format!("room-{}", i / size);
        let payload_size = a.payload;
        spawn_local(async move {
            // Spread the clients' ticks over the interval.
            let phase = interval.mul_f64((i as f64 * 0.618_034) % 1.0);
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + phase, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut buf = Vec::new();
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        if stop.get() { continue; }
                        buf.clear();
                        let n = sent[i].get();
                        publish_frame(&mut buf, &topic, &payload(n, i, payload_size));
                        if ws.write_raw(&buf).await.is_err() { return; }
                        sent[i].set(n + 1);
                    }
                    r = ws.read_frames(|op, text| {
                        if op == OP_TEXT {
                            if let Some((p, s)) = d.record(text) { check.see(p, s); }
                        }
                    }) => {
                        if !matches!(r, Ok(true)) { return; }
                    }
                }
            }
        });
    }
    let d = deliveries.clone();
    let (ops, m) = measure(run, progress, move || d.total.get(), Some(&deliveries.recording)).await;
    stop.set(true);

    progress.phase("draining");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut report = Report::new("rooms", &run.url, m, "deliveries", ops);
    for (i, check) in checks.iter().enumerate() {
        let next = check.next.borrow();
        let room = i / size;
        for p in (room * size)..((room + 1) * size).min(a.clients) {
            report.lost += sent[p].get().saturating_sub(next[p]);
        }
        report.lost += check.lost.get();
        report.duplicated += check.duplicated.get();
        report.out_of_order += check.out_of_order.get();
    }
    let offered = a.clients as f64 * a.msg_rate * size as f64;
    let hist = deliveries.hist.borrow().clone();
    let report = with_latency(report, &hist)
        .detail("clients", a.clients as f64)
        .detail("room_size", size as f64)
        .detail("offered_deliveries_per_second", offered);
    Ok((report, hist))
}

/// Opens and holds `n` subscribed connections (or fallback sessions) in
/// this process. Returns once all are connected; they answer pings (read
/// heartbeats) until `stop`.
pub async fn hold_idle(run: &Run, n: usize, topics: usize, transport: Transport, stop: Rc<Notify>) -> Result<(), String> {
    let topics = topics.max(1);
    let subs = subscribers(run, transport, n, move |i| format!("idle-{}", i % topics)).await?;
    for mut sub in subs {
        let stop = stop.clone();
        spawn_local(async move {
            loop {
                tokio::select! {
                    _ = stop.notified() => return,
                    r = sub.read_texts(|_| {}) => if !matches!(r, Ok(true)) { return },
                }
            }
        });
    }
    Ok(())
}

pub async fn idle(run: &Run, a: &IdleArgs, progress: &Progress) -> Result<Report, String> {
    check_fallback(run, a.transport)?;
    let pid = run.server_pid;
    let before = pid.and_then(crate::proc::usage);
    progress.phase("connecting");
    let per_proc = sessions_per_process(crate::fd_budget(), a.transport);
    let mut children = Vec::new();
    let stop = Rc::new(Notify::new());
    if a.connections > per_proc {
        // Spread over child processes, each within its own open-file limit.
        let mut offset = 0;
        while offset < a.connections {
            let k = per_proc.min(a.connections - offset);
            children.push(crate::spawn_idle_child(run, k, a.topics, a.transport, offset)?);
            offset += k;
        }
        for c in &mut children {
            crate::await_child_ready(c)?;
        }
    } else {
        hold_idle(run, a.connections, a.topics, a.transport, stop.clone()).await?;
    }
    progress.phase("settling");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let connected = pid.and_then(crate::proc::usage);
    let (_, m) = measure(run, progress, || 0, None).await;
    stop.notify_waiters();
    drop(children);
    let mut report = Report::new("idle", &subscriber_url(run, a.transport), m, "connections", a.connections as u64).transport(a.transport);
    report.ops_per_second = 0.0;
    report.ops_per_server_cpu_second = None;
    if let (Some(b), Some(c)) = (before, connected) {
        let per_conn = c.rss_bytes.saturating_sub(b.rss_bytes) as f64 / a.connections.max(1) as f64;
        // Connecting, welcome and subscribe (on a fallback transport: the
        // stream's request, and the subscribe's POST on a connection of
        // its own), plus the settling second's idle CPU.
        let setup_us = (c.cpu_seconds - b.cpu_seconds) * 1e6 / a.connections.max(1) as f64;
        report = report
            .detail("server_cpu_us_per_connection_setup", (setup_us * 10.0).round() / 10.0)
            .detail("server_rss_per_connection_bytes", per_conn.round())
            .detail("server_rss_before_connecting_bytes", b.rss_bytes as f64)
            .detail("server_rss_connected_bytes", c.rss_bytes as f64);
    }
    if let Some(s) = &report.server {
        let idle_cpu = s.cpu_percent;
        report = report.detail("server_idle_cpu_percent", (idle_cpu * 1000.0).round() / 1000.0);
    }
    Ok(report.detail("processes", children_count(a.connections, per_proc) as f64))
}

/// Connections one process may hold with `budget` descriptors: a fallback
/// session's subscribe takes a second descriptor for its POST while it is
/// set up, for up to `SETUP_PARALLELISM` sessions at once.
fn sessions_per_process(budget: usize, transport: Transport) -> usize {
    match transport {
        Transport::WebSocket => budget,
        _ => budget - SETUP_PARALLELISM.min(budget / 2),
    }
}

fn children_count(n: usize, per_proc: usize) -> usize {
    if n > per_proc {
        n.div_ceil(per_proc)
    } else {
        1
    }
}

/// Closed-loop workers that each repeat one operation (a handshake cycle, a
/// round trip) until stopped: the shared counters and the latency histogram.
/// How one closed-loop operation ended.
enum Op {
    /// Completed; its latency runs to now.
    Done,
    /// Completed at this time (ns): what the operation did after (undoing
    /// it, say) is not part of its latency.
    DoneAt(u64),
    /// Failed: counted, and the loop goes on.
    Failed,
    /// Failed so that its loop cannot go on (the connection is gone).
    Broken,
}

/// Closed loops: each runs one operation after another; completions are
/// counted (and their latency recorded while measuring), failures too.
struct Loops {
    done: Cell<u64>,
    failed: Cell<u64>,
    recording: Cell<bool>,
    stop: Cell<bool>,
    hist: RefCell<Histogram<u64>>,
}

impl Loops {
    fn new() -> Rc<Loops> {
        Rc::new(Loops {
            done: Cell::new(0),
            failed: Cell::new(0),
            recording: Cell::new(false),
            stop: Cell::new(false),
            hist: RefCell::new(new_hist()),
        })
    }

    /// Counts one completed operation that began at `started` and ended at
    /// `ended` (ns).
    fn completed(&self, started: u64, ended: u64) {
        self.done.set(self.done.get() + 1);
        if self.recording.get() {
            let _ = self.hist.borrow_mut().record(ended.saturating_sub(started).max(1));
        }
    }

    /// One closed loop per item of `states`: `op` on it again and again
    /// until the measurement stops (see [`Op`] for what each outcome counts).
    fn spawn_each<S: 'static>(self: &Rc<Loops>, states: impl IntoIterator<Item = S>, op: impl AsyncFn(&mut S) -> Op + 'static) -> Vec<tokio::task::JoinHandle<()>> {
        let op = Rc::new(op);
        states
            .into_iter()
            .map(|mut state| {
                let (loops, op) = (self.clone(), op.clone());
                spawn_local(async move {
                    while !loops.stop.get() {
                        let started = now_ns();
                        match op(&mut state).await {
                            Op::Done => loops.completed(started, now_ns()),
                            Op::DoneAt(ended) => loops.completed(started, ended),
                            Op::Failed => loops.failed.set(loops.failed.get() + 1),
                            Op::Broken => {
                                loops.failed.set(loops.failed.get() + 1);
                                return;
                            }
                        }
                    }
                })
            })
            .collect()
    }

    /// Measures while `tasks` run, then stops and joins them.
    async fn measure(
        self: &Rc<Loops>,
        run: &Run,
        progress: &Progress,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    ) -> (u64, crate::report::Measured, Histogram<u64>) {
        let me = self.clone();
        let (ops, m) = measure(run, progress, move || me.done.get(), Some(&self.recording)).await;
        self.stop.set(true);
        for t in tasks {
            let _ = t.await;
        }
        (ops, m, self.hist.borrow().clone())
    }
}

pub async fn connect(run: &Run, a: &ConnectArgs, progress: &Progress) -> Result<(Report, Histogram<u64>), String> {
    let loops = Loops::new();
    let (target, sources, offset, stride) = (run.target.clone(), run.sources, run.source_offset, a.concurrency);
    // With --token-file, connection i presents token i mod N.
    let targets: Rc<Vec<Target>> = Rc::new(match &a.token_file {
        Some(file) => {
            let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
            let base = target.path.split('?').next().unwrap_or("/ws").to_string();
            let v: Vec<Target> = text.lines().filter(|l| !l.trim().is_empty()).map(|t| target.with_path(&format!("{base}?token={}", t.trim()))).collect();
            if v.is_empty() {
                return Err(format!("{}: no tokens", file.display()));
            }
            v
        }
        None => vec![target],
    });
    let (welcome_only, connect_frame, expect_user, tokens) = (a.welcome_only, a.connect_frame, a.expect_user, targets.len());
    // Each loop's state: the index of its next connection (for its source
    // address and its token).
    let tasks = loops.spawn_each(0..a.concurrency, async move |i: &mut usize| {
        let (source, target) = (source(*i, sources, offset), &targets[*i % targets.len()]);
        *i += stride;
        let cycle = async {
            let mut ws = Ws::connect(target, source, true).await?;
            if connect_frame {
                ws.send_text(br#"{"type":"connect"}"#).await?;
            }
            let welcome = ws.next_text().await?;
            let welcomed = now_ns();
            if !welcome.starts_with(br#"{"type":"welcome""#) || (expect_user && field_str(&welcome, br#""user":""#).is_none()) {
                return Err(std::io::Error::other("not welcomed as a user"));
            }
            if !welcome_only {
                ws.subscribe("connect").await?;
            }
            let mut close = Vec::new();
            put_frame(&mut close, crate::ws::OP_CLOSE, &1000u16.to_be_bytes());
            ws.write_raw(&close).await?;
            Ok::<u64, std::io::Error>(welcomed)
        };
        match cycle.await {
            // The handshake's latency ends at the welcome.
            Ok(welcomed) if welcome_only => Op::DoneAt(welcomed),
            Ok(_) => Op::Done,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Op::Failed
            }
        }
    });
    let (ops, m, hist) = loops.measure(run, progress, tasks).await;
    let report = with_latency(Report::new("connect", &run.url, m, "handshakes", ops), &hist)
        .detail("concurrency", a.concurrency as f64)
        .detail("welcome_only", f64::from(u8::from(a.welcome_only)))
        .detail("tokens", if a.token_file.is_some() { tokens as f64 } else { 0.0 })
        .detail("failed", loops.failed.get() as f64);
    Ok((report, hist))
}

/// The string after `key` (which ends with the opening quote), when there is one.
pub fn field_str<'a>(text: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let len = text[at..].iter().position(|&b| b == b'"')?;
    Some(&text[at..at + len])
}

pub async fn echo(run: &Run, a: &EchoArgs, progress: &Progress) -> Result<(Report, Histogram<u64>), String> {
    progress.phase("connecting");
    let conns = connect_many(run, &run.target, a.connections, |_, ws| async move { Ok(ws) }).await?;
    let loops = Loops::new();
    let message = "e".repeat(a.payload);
    let tasks = loops.spawn_each(conns, async move |ws: &mut Ws| {
        if ws.send_text(message.as_bytes()).await.is_err() || ws.next_text().await.is_err() {
            return Op::Broken;
        }
        Op::Done
    });
    let (ops, m, hist) = loops.measure(run, progress, tasks).await;
    let report = with_latency(Report::new("echo", &run.url, m, "round_trips", ops), &hist)
        .detail("connections", a.connections as f64)
        .detail("payload_bytes", a.payload as f64);
    Ok((report, hist))
}

/// `publish`: `connections` connections each publish to their topic with an
/// id, at most `window` awaiting their ack (closed loop); `subscribers`
/// receive the topics and check every acknowledged publish arrives once and
/// in its publisher's order. Ops are acks; latency is publish sent to ack
/// read.
pub async fn publish(run: &Run, a: &PublishArgs, progress: &Progress) -> Result<(Report, Histogram<u64>), String> {
    let topics = a.topics.max(1);
    let prefix: Rc<str> = a.topic_prefix.clone().into();
    progress.phase("connecting subscribers");
    let p = prefix.clone();
    let subs = connect_many(run, &run.target, a.subscribers, move |i, mut ws| {
        let t = format!("{p}{}", i % topics);
        async move {
            ws.welcome_and_subscribe(&t).await?;
            Ok(ws)
        }
    })
    .await?;
    let deliveries = Deliveries::new(a.connections);
    let mut checks = Vec::new();
    for mut ws in subs {
        let check = Rc::new(SeqCheck::new(a.connections));
        checks.push(check.clone());
        let d = deliveries.clone();
        spawn_local(async move {
            while let Ok(true) = ws
                .read_frames(|op, text| {
                    if op == OP_TEXT {
                        if let Some((p, s)) = d.record(text) {
                            check.see(p, s);
                        }
                    }
                })
                .await
            {}
        });
    }
    progress.phase("connecting publishers");
    let publishers = connect_many(run, &run.target, a.connections, |_, mut ws| async move {
        ws.next_text().await?;
        Ok(ws)
    })
    .await?;
    let loops = Loops::new();
    // Per publisher: publishes acknowledged (each owed to its topic's subscribers).
    let acked: Rc<Vec<Cell<u64>>> = Rc::new((0..a.connections).map(|_| Cell::new(0)).collect());
    let misordered = Rc::new(Cell::new(0u64));
    let (window, size) = (a.window.max(1), a.payload);
    let mut tasks = Vec::new();
    for (p, mut ws) in publishers.into_iter().enumerate() {
        let topic = format!("{prefix}{}", p % topics);
        let (loops, acked, misordered) = (loops.clone(), acked.clone(), misordered.clone());
        tasks.push(spawn_local(async move {
            // (id, send time) of the publishes awaiting their ack, oldest first:
            // replies to one connection come in request order.
            let mut waiting: std::collections::VecDeque<(u64, u64)> = std::collections::VecDeque::with_capacity(window);
            let (mut seq, mut buf) = (0u64, Vec::with_capacity(4096));
            loop {
                if !loops.stop.get() && waiting.len() < window {
                    buf.clear();
                    while waiting.len() < window {
                        let req = format!(r#"{{"type":"publish","topic":"{topic}","payload":{},"id":{seq}}}"#, payload(seq, p, size));
                        put_frame(&mut buf, OP_TEXT, req.as_bytes());
                        waiting.push_back((seq, now_ns()));
                        seq += 1;
                    }
                    if ws.write_raw(&buf).await.is_err() {
                        loops.failed.set(loops.failed.get() + 1);
                        return;
                    }
                }
                if waiting.is_empty() {
                    return;
                }
                let read = ws.read_frames(|op, text| {
                    if op != OP_TEXT {
                        return;
                    }
                    let ack = text.starts_with(br#"{"type":"ack""#);
                    if !ack && !text.starts_with(br#"{"type":"error""#) {
                        return;
                    }
                    let Some((id, sent)) = waiting.pop_front() else { return };
                    if field(text, br#""id":"#) != Some(id) {
                        misordered.set(misordered.get() + 1);
                    }
                    if ack {
                        loops.completed(sent, now_ns());
                        acked[p].set(acked[p].get() + 1);
                    } else {
                        loops.failed.set(loops.failed.get() + 1);
                    }
                });
                // After the window, the last acks are waited for a while, not forever.
                let limit = if loops.stop.get() { Duration::from_secs(5) } else { Duration::from_secs(3600) };
                match tokio::time::timeout(limit, read).await {
                    Ok(Ok(true)) => {}
                    _ => {
                        loops.failed.set(loops.failed.get() + waiting.len() as u64);
                        return;
                    }
                }
            }
        }));
    }
    let (ops, m, hist) = loops.measure(run, progress, tasks).await;
    // Drain: wait until deliveries stop arriving.
    progress.phase("draining");
    let mut last = u64::MAX;
    let deadline = Instant::now() + Duration::from_secs(5);
    while deliveries.total.get() != last && Instant::now() < deadline {
        last = deliveries.total.get();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut report = with_latency(Report::new("publish", &run.url, m, "publishes", ops), &hist);
    for (i, check) in checks.iter().enumerate() {
        let next = check.next.borrow();
        for (p, acked) in acked.iter().enumerate() {
            if p % topics == i % topics {
                report.lost += acked.get().saturating_sub(next[p]);
            }
        }
        report.lost += check.lost.get();
        report.duplicated += check.duplicated.get();
        report.out_of_order += check.out_of_order.get();
    }
    let report = report
        .detail("connections", a.connections as f64)
        .detail("window", window as f64)
        .detail("topics", topics as f64)
        .detail("subscribers", a.subscribers as f64)
        .detail("payload_bytes", a.payload as f64)
        .detail("failed", loops.failed.get() as f64)
        .detail("acks_out_of_order", misordered.get() as f64)
        .detail("deliveries", deliveries.total.get() as f64);
    Ok((report, hist))
}

/// One keep-alive HTTP/1.1 connection to the admin listener.
struct Http {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl Http {
    async fn connect(addr: &str) -> std::io::Result<Http> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Http { stream, buf: Vec::with_capacity(4096) })
    }

    /// Sends one request and reads its whole response; returns the status.
    async fn request(&mut self, request: &[u8]) -> std::io::Result<u16> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.stream.write_all(request).await?;
        self.buf.clear();
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(head)) = response.parse(&self.buf) {
                let length = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                    .unwrap_or(0);
                if self.buf.len() >= head + length {
                    return Ok(response.code.unwrap_or(0));
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

impl Http {
    /// The body of the last response.
    fn body(&self) -> &[u8] {
        memchr::memmem::find(&self.buf, b"\r\n\r\n").map_or(&[][..], |at| &self.buf[at + 4..])
    }
}

/// The server's `frames_written` and `socket_writes` counters (all shards),
/// from `/metrics` on its admin listener, when it has one.
async fn send_counters(admin: Option<&str>) -> Option<(f64, f64)> {
    let mut http = Http::connect(admin?).await.ok()?;
    if http.request(&http_get("/metrics", None)).await.ok()? != 200 {
        return None;
    }
    let text = String::from_utf8_lossy(http.body()).into_owned();
    let sum = |name: &str| -> f64 {
        text.lines().filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' '])).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    };
    Some((sum("shardcast_frames_written_total"), sum("shardcast_socket_writes_total")))
}

/// A GET request for `path` (keep-alive), with the API key when there is one.
fn http_get(path: &str, api_key: Option<&str>) -> Vec<u8> {
    let auth = api_key.map_or(String::new(), |k| format!("Authorization: apikey {k}\r\n"));
    format!("GET {path} HTTP/1.1\r\nHost: bench\r\n{auth}\r\n").into_bytes()
}

/// While `stop` is unset, polls the admin plane as the dashboard does
/// (`/api/info` and `/api/history?since=`), `hz` times a second. Returns
/// the polls answered 200.
pub async fn poll_dashboard(admin: String, hz: f64, api_key: Option<String>, stop: Rc<Cell<bool>>) -> u64 {
    let Ok(mut http) = Http::connect(&admin).await else { return 0 };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / hz.max(0.01)));
    let mut answered = 0;
    let mut since = 0u64;
    while !stop.get() {
        tick.tick().await;
        let info = http.request(&http_get("/api/info", api_key.as_deref())).await;
        let history = http.request(&http_get(&format!("/api/history?since={since}"), api_key.as_deref())).await;
        since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        match (info, history) {
            (Ok(200), Ok(200)) => answered += 1,
            _ => break,
        }
    }
    answered
}

/// `api`: backends publishing over the admin API. `connections` keep-alive
/// HTTP/1.1 connections each POST `/api/publish` one request at a time
/// (closed loop); `subscribers` WebSocket clients receive the topic. Ops are
/// publishes answered 200; the admin thread's CPU is reported apart.
pub async fn api(run: &Run, a: &ApiArgs, progress: &Progress) -> Result<(Report, Histogram<u64>), String> {
    let admin = run.admin.clone().ok_or("api needs the admin listener: --admin HOST:PORT, or --spawn a server that has one")?;
    progress.phase("connecting subscribers");
    let subs = connect_many(run, &run.target, a.subscribers, |_, mut ws| async move {
        ws.welcome_and_subscribe("api-bench").await?;
        Ok(ws)
    })
    .await?;
    let delivered = Rc::new(Cell::new(0u64));
    for mut ws in subs {
        let delivered = delivered.clone();
        spawn_local(async move {
            while let Ok(true) = ws.read_frames(|op, _| delivered.set(delivered.get() + u64::from(op == OP_TEXT))).await {}
        });
    }
    let body = format!(r#"{{"topic":"api-bench","payload":"{}"}}"#, "x".repeat(a.payload));
    let auth = a.api_key.as_ref().map_or(String::new(), |k| format!("Authorization: apikey {k}\r\n"));
    let request: Rc<[u8]> = format!(
        "POST /api/publish HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}\r\n{body}",
        body.len()
    )
    .into_bytes()
    .into();
    progress.phase("connecting to the admin listener");
    let mut conns = Vec::with_capacity(a.connections);
    for _ in 0..a.connections {
        conns.push(Http::connect(&admin).await.map_err(|e| format!("admin {admin}: {e}"))?);
    }
    let loops = Loops::new();
    let tasks = loops.spawn_each(conns, async move |http: &mut Http| match http.request(&request).await {
        Ok(200) => Op::Done,
        Ok(_) => Op::Failed,
        Err(_) => Op::Broken,
    });
    let thread_cpu = || run.server_pid.and_then(|pid| crate::proc::thread_cpu_seconds(pid, "shardcast-admin"));
    let process_cpu = || run.server_pid.and_then(crate::proc::usage).map(|u| u.cpu_seconds);
    let (thread_before, process_before) = (thread_cpu(), process_cpu());
    let (ops, m, hist) = loops.measure(run, progress, tasks).await;
    let mut report = with_latency(Report::new("api", &run.url, m, "publishes", ops), &hist)
        .detail("connections", a.connections as f64)
        .detail("payload_bytes", a.payload as f64)
        .detail("subscribers", a.subscribers as f64)
        .detail("failed", loops.failed.get() as f64)
        .detail("deliveries", delivered.get() as f64);
    // The admin thread's share of the server's CPU over the whole run
    // (warm-up included), applied to the measured window.
    if let (Some(t0), Some(p0), Some(t1), Some(p1)) = (thread_before, process_before, thread_cpu(), process_cpu()) {
        if p1 > p0 {
            let share = (t1 - t0) / (p1 - p0);
            report = report.detail("admin_thread_cpu_share", (share * 1000.0).round() / 1000.0);
            if let Some(cpu) = report.server.as_ref().map(|s| s.cpu_seconds * share).filter(|c| *c > 0.0) {
                report = report.detail("publishes_per_admin_thread_cpu_second", (ops as f64 / cpu).round());
            }
        }
    }
    Ok((report, hist))
}

/// `recover`: publishes `messages` messages to a history topic, then, on one
/// connection, subscribes with `recover` from before them, checks the ack
/// recovered every one, unsubscribes, and again (closed loop). Ops are
/// recoveries; latency is request to complete ack.
pub async fn recover(run: &Run, a: &RecoverArgs, progress: &Progress) -> Result<(Report, Histogram<u64>), String> {
    let io = |e: std::io::Error| e.to_string();
    progress.phase("publishing the history");
    let mut ws = Ws::connect(&run.target, None, false).await.map_err(io)?;
    ws.next_text().await.map_err(io)?;
    let mut buf = Vec::new();
    for i in 0..a.messages {
        publish_frame(&mut buf, &a.topic, &payload(i as u64, 0, a.payload));
    }
    ws.write_raw(&buf).await.map_err(io)?;
    // The position after them (requests are answered in order).
    let ask = format!(r#"{{"type":"history","topic":"{}","limit":0,"id":1}}"#, a.topic);
    ws.send_text(ask.as_bytes()).await.map_err(io)?;
    let position = loop {
        let reply = ws.next_text().await.map_err(io)?;
        let v: serde_json::Value = serde_json::from_slice(&reply).map_err(|e| e.to_string())?;
        match v["type"].as_str() {
            Some("history") => break v,
            Some("error") => return Err(format!("history request refused: {v} (is there a history namespace matching {}?)", a.topic)),
            _ => continue,
        }
    };
    let top = position["offset"].as_u64().ok_or("no offset in the history reply")?;
    let epoch = position["epoch"].as_str().ok_or("no epoch")?.to_string();
    let since = top.checked_sub(a.messages as u64).ok_or("fewer messages in history than published: raise history_size")?;
    let subscribe = format!(r#"{{"type":"subscribe","topic":"{}","recover":{{"offset":{since},"epoch":"{epoch}"}},"id":2}}"#, a.topic);
    let unsubscribe = format!(r#"{{"type":"unsubscribe","topic":"{}","id":3}}"#, a.topic);
    let expected = a.messages;
    let loops = Loops::new();
    let tasks = loops.spawn_each([ws], async move |ws: &mut Ws| {
        if ws.send_text(subscribe.as_bytes()).await.is_err() {
            return Op::Broken;
        }
        let ack = loop {
            match ws.next_text().await {
                Ok(t) if t.starts_with(br#"{"type":"ack""#) || t.starts_with(br#"{"type":"error""#) => break t,
                Ok(_) => continue,
                Err(_) => return Op::Broken,
            }
        };
        let acked = now_ns();
        let recovered = serde_json::from_slice::<serde_json::Value>(&ack)
            .map(|v| v["recovered"] == true && v["publications"].as_array().map_or(0, Vec::len) == expected)
            .unwrap_or(false);
        // Unsubscribing again is not part of the recovery's latency.
        if ws.send_text(unsubscribe.as_bytes()).await.is_err() {
            return Op::Broken;
        }
        loop {
            match ws.next_text().await {
                Ok(t) if t.starts_with(br#"{"type":"ack""#) => break,
                Ok(_) => continue,
                Err(_) => return Op::Broken,
            }
        }
        if recovered {
            Op::DoneAt(acked)
        } else {
            Op::Failed
        }
    });
    let (ops, m, hist) = loops.measure(run, progress, tasks).await;
    let (done, failed) = (loops.done.get(), loops.failed.get());
    if done == 0 {
        return Err(format!("no recovery succeeded ({failed} failed)"));
    }
    let report = Report::new("recover", &run.url, m, "recoveries", ops)
        .detail("messages_per_recovery", a.messages as f64)
        .detail("payload_bytes", a.payload as f64)
        .detail("failed_recoveries", failed as f64);
    Ok((with_latency(report, &hist), hist))
}
