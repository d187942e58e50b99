//! `bridge`: node-to-node delivery through Redis, one Redis vs a Redis
//! Cluster of N primaries, measured side by side in one run (interleaved
//! rounds, the same binary).
//!
//! Each run starts two shardcast nodes (one shard each unless `--shards`):
//! node A, where the publishers connect, and node B, where the subscribers
//! connect (the measured server). Every message crosses A's bridge, Redis
//! (PUBLISH, or SPUBLISH to the primary owning the topic's slot) and B's
//! bridge. Reported beside the throughput and latency: the CPU of B, of A,
//! of every redis-server, and of the generator, so that which process
//! saturates first is visible.
//!
//! Two settings per topology: `--max` (publishers `--window` messages
//! ahead: throughput) and a fixed `--rate` (latency well below saturation).
//! This run starts the redis-servers itself (the cluster without replicas,
//! so that both topologies spend CPU on pub/sub only).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;

use crate::proc::Spawned;
use crate::report::Report;
use crate::{common, print_medians, run_once, sibling, Cli, Metric, RoundArgs, TempConfig};

#[derive(Debug, Clone, Args)]
pub struct BridgeArgs {
    #[command(flatten)]
    rounds: RoundArgs,
    /// Publishers (on node A) and subscribers (on node B): one of each per topic.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Topics (spread over the cluster's primaries by their slots; publisher
    /// p publishes to topic p mod topics, so more topics than publishers idle).
    #[arg(long, default_value_t = 4)]
    topics: usize,
    /// Messages in flight per publisher in the `--max` runs.
    #[arg(long, default_value_t = 768)]
    window: usize,
    /// Total publishes per second in the latency runs (0: skip them).
    #[arg(long, default_value_t = 27_000)]
    rate: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Primaries of the Redis Cluster (0: only one Redis).
    #[arg(long, default_value_t = 3)]
    primaries: usize,
    /// Shards per node.
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Prefix for node A's command (`--server-prefix` is node B's).
    #[arg(long, default_value = "")]
    publisher_node_prefix: String,
    /// The redis-server to start.
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
    /// The redis-cli that creates the cluster.
    #[arg(long, default_value = "redis-cli")]
    redis_cli: String,
}

/// redis-server processes without persistence, working in a temporary
/// directory of their own (nothing lands in the caller's); killed, and the
/// directory removed, when dropped.
pub struct Redises {
    procs: Vec<(Child, u16)>,
    dir: std::path::PathBuf,
}

impl Redises {
    pub fn start(program: &str, count: usize, cluster: bool) -> Result<Redises, String> {
        let dir = std::env::temp_dir().join(format!("shardcast-bench-redis-{}-{}", std::process::id(), free_port()?));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut procs = Redises { procs: Vec::new(), dir: dir.clone() };
        for _ in 0..count {
            let port = free_port()?;
            let mut cmd = Command::new(program);
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir"]).arg(&dir);
            if cluster {
                let conf = dir.join(format!("nodes-{port}.conf"));
                cmd.args(["--cluster-enabled", "yes", "--cluster-port", &free_port()?.to_string(), "--cluster-config-file"]).arg(conf);
            }
            let child = cmd
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start {program}: {e} (install redis-server, or pass --redis-server PATH)"))?;
            procs.procs.push((child, port));
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if Instant::now() > deadline {
                    return Err(format!("{program} did not listen on port {port}"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(procs)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|(c, _)| c.id()).collect()
    }

    pub fn ports(&self) -> Vec<u16> {
        self.procs.iter().map(|(_, p)| *p).collect()
    }
}

impl Drop for Redises {
    fn drop(&mut self) {
        for (child, _) in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).map_err(|e| e.to_string())
}

/// Joins `redises` into a cluster (no replicas) and waits until it is ok.
fn create_cluster(cli: &str, redises: &Redises) -> Result<(), String> {
    let mut create = Command::new(cli);
    create.args(["--cluster", "create"]);
    for port in redises.ports() {
        create.arg(format!("127.0.0.1:{port}"));
    }
    let out = create.args(["--cluster-replicas", "0", "--cluster-yes"]).output().map_err(|e| format!("cannot run {cli}: {e}"))?;
    if !out.status.success() {
        return Err(format!("redis-cli --cluster create failed: {}", String::from_utf8_lossy(&out.stdout)));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = redises.ports().into_iter().all(|port| {
            Command::new(cli)
                .args(["-p", &port.to_string(), "cluster", "info"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
        });
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the benchmark's cluster never reached cluster_state:ok".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// CPU % of a core over the measured window, of the `--also-pid` processes in `pids`.
fn cpu_percent(r: &Report, pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| r.details.get(&format!("pid_{p}_cpu_seconds"))).sum::<f64>() / r.seconds * 100.0
}

pub fn run(a: BridgeArgs) -> Result<(), String> {
    let single = Redises::start(&a.redis_server, 1, false)?;
    let cluster = if a.primaries > 0 {
        let c = Redises::start(&a.redis_server, a.primaries, true)?;
        create_cluster(&a.redis_cli, &c)?;
        Some(c)
    } else {
        None
    };
    let base = "[limits]\npublish_rate = 0\n[log]\nlevel = \"warn\"\n[server]\nmax_connections = 19500\n[queue]\nmax_messages = 100000\nmax_bytes = 67108864\n";
    let single_config = TempConfig::write("bridge-single", &format!("{base}[redis]\nurl = \"redis://127.0.0.1:{}\"\n", single.ports()[0]))?;
    let cluster_config = match &cluster {
        Some(c) => Some(TempConfig::write("bridge-cluster", &format!("{base}[redis]\nmode = \"cluster\"\nurls = [\"redis://127.0.0.1:{}\"]\n", c.ports()[0]))?),
        None => None,
    };
    let binary = sibling("shardcast")?;
    let node = |prefix: &str, config: &TempConfig| {
        format!("{prefix}{binary} --listen 127.0.0.1:0 --admin-listen '' --shards {} --config {}", a.shards, config.0.display())
    };
    let mut settings: Vec<(String, &Redises, &TempConfig, bool)> = vec![("single, --max".into(), &single, &single_config, true)];
    if let (Some(c), Some(config)) = (&cluster, &cluster_config) {
        settings.push((format!("cluster {}, --max", a.primaries), c, config, true));
    }
    if a.rate > 0 {
        settings.push(("single, rate".into(), &single, &single_config, false));
        if let (Some(c), Some(config)) = (&cluster, &cluster_config) {
            settings.push((format!("cluster {}, rate", a.primaries), c, config, false));
        }
    }
    let mut results: Vec<Vec<Report>> = settings.iter().map(|_| Vec::new()).collect();
    for round in 0..a.rounds.rounds.max(1) {
        for (i, (label, redises, config, max)) in settings.iter().enumerate() {
            let publisher_node = Spawned::start(&node(&a.publisher_node_prefix, config))?;
            let a_pid = publisher_node.pid();
            let mut argv: Vec<String> = vec!["shardcast-bench".into(), "fanout".into()];
            argv.extend(a.rounds.run_options());
            let (subs, topics, payload) = (a.publishers.max(a.topics).to_string(), a.topics.to_string(), a.payload.to_string());
            argv.extend(["--subscribers", &subs, "--topics", &topics, "--publishers", &a.publishers.to_string(), "--payload", &payload].map(String::from));
            if *max {
                argv.extend(["--max".into(), "--window".into(), a.window.to_string()]);
            } else {
                argv.extend(["--rate".into(), a.rate.to_string()]);
            }
            argv.extend(["--publish-url".into(), format!("ws://{}/ws", publisher_node.addr)]);
            argv.extend(["--also-pid".into(), publisher_node.pid().to_string()]);
            for pid in redises.pids() {
                argv.extend(["--also-pid".into(), pid.to_string()]);
            }
            argv.extend(["--spawn".into(), node(&a.rounds.server_prefix, config)]);
            let cli = <Cli as clap::Parser>::try_parse_from(&argv).map_err(|e| e.to_string())?;
            let json = common(&cli.scenario).json;
            let mut report = run_once(&cli.scenario)?;
            drop(publisher_node);
            let node_a_cpu = cpu_percent(&report, &[a_pid]);
            let redis_cpu = cpu_percent(&report, &redises.pids());
            let busiest_redis = redises.pids().iter().map(|p| cpu_percent(&report, &[*p])).fold(0.0, f64::max);
            report.details.insert("node_a_cpu_percent".into(), node_a_cpu);
            report.details.insert("redis_cpu_percent".into(), redis_cpu);
            report.details.insert("busiest_redis_cpu_percent".into(), busiest_redis);
            eprintln!(
                "round {} {label}: {:.0} msg/s, p99 {} µs; CPU: node B {:.0}%, node A {node_a_cpu:.0}%, redis {redis_cpu:.0}% (busiest {busiest_redis:.0}%), generator {:.0}%",
                round + 1,
                report.ops_per_second,
                report.latency.as_ref().map_or("-".into(), |l| format!("{:.0}", l.p99_us)),
                report.server.as_ref().map_or(0.0, |s| s.cpu_percent),
                report.generator_cpu_seconds / report.seconds * 100.0,
            );
            if json {
                let mut v = serde_json::to_value(&report).expect("serialises");
                v["server_name"] = label.as_str().into();
                v["round"] = (round + 1).into();
                println!("{v}");
            }
            results[i].push(report);
        }
    }
    if a.rounds.json {
        return Ok(());
    }
    let labels: Vec<&str> = settings.iter().map(|s| s.0.as_str()).collect();
    println!(
        "node A -> Redis -> node B: {} publishers, {} topics, {} B, {} shard(s) per node — medians of {} interleaved rounds",
        a.publishers, a.topics, a.payload, a.shards, a.rounds.rounds
    );
    let metrics: [(&str, Metric); 9] = [
        ("messages/s", |r: &Report| Some(r.ops_per_second)),
        ("p50 latency µs", |r: &Report| r.latency.as_ref().map(|l| l.p50_us)),
        ("p99 latency µs", |r: &Report| r.latency.as_ref().map(|l| l.p99_us)),
        ("node B (subscribers) CPU %", |r: &Report| r.server.as_ref().map(|s| s.cpu_percent)),
        ("node A (publishers) CPU %", |r: &Report| r.details.get("node_a_cpu_percent").copied()),
        ("redis CPU %, all", |r: &Report| r.details.get("redis_cpu_percent").copied()),
        ("redis CPU %, busiest", |r: &Report| r.details.get("busiest_redis_cpu_percent").copied()),
        ("generator CPU %", |r: &Report| Some(r.generator_cpu_seconds / r.seconds * 100.0)),
        ("lost + out of order", |r: &Report| Some((r.lost + r.out_of_order) as f64)),
    ];
    let ratios: Vec<(usize, usize)> = if labels.len() >= 2 && cluster.is_some() { vec![(1, 0)] } else { Vec::new() };
    print_medians(&metrics, &labels, &results, &ratios);
    Ok(())
}
