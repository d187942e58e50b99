//! The Redis processes of the topology tests, each a real redis-server on
//! ephemeral ports with its files in a temporary directory: one server, a
//! Redis Cluster with a replica per primary, a primary with a replica and a
//! Sentinel. Killed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shardcast::bridge::cluster::{key_slot, slot_tag};

use crate::util::{eventually, free_port};

/// One redis-server process, killed when dropped.
pub struct Proc {
    pub port: u16,
    pub child: Option<Child>,
    /// Its working directory: what it writes without a `--dir` of its own
    /// (a replica's sync, a `SAVE`) lands there, not in the repository.
    _dir: tempfile::TempDir,
}

impl Proc {
    pub fn spawn(port: u16, args: &[&str]) -> Proc {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(args)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (tests/run.sh installs it)");
        let proc = Proc { port, child: Some(child), _dir: dir };
        eventually(Duration::from_secs(10), "redis-server to accept connections", || proc.try_conn().is_some());
        proc
    }

    pub fn try_conn(&self) -> Option<redis::Connection> {
        let mut c = redis::Client::open(format!("redis://127.0.0.1:{}", self.port)).ok()?.get_connection().ok()?;
        redis::cmd("PING").query::<String>(&mut c).ok()?;
        Some(c)
    }

    pub fn conn(&self) -> redis::Connection {
        self.try_conn().expect("redis is up")
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of `primaries` primaries with one replica each.
pub struct Cluster {
    pub nodes: Vec<Proc>,
    _dir: tempfile::TempDir,
}

/// A primary as `CLUSTER NODES` lists it.
#[derive(Debug, Clone)]
pub struct Primary {
    pub port: u16,
    pub id: String,
    /// Slot ranges it owns, inclusive.
    pub slots: Vec<(u16, u16)>,
}

impl Cluster {
    pub fn start(primaries: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<Proc> = (0..primaries * 2)
            .map(|_| {
                let (port, bus) = (free_port(), free_port());
                let conf = format!("nodes-{port}.conf");
                let args = [
                    "--port", &port.to_string(), "--cluster-port", &bus.to_string(), "--bind", "127.0.0.1",
                    "--cluster-enabled", "yes", "--cluster-config-file", &conf, "--cluster-node-timeout", "1000",
                    "--dir", dir.path().to_str().unwrap(), "--save", "", "--appendonly", "no",
                    // Replicas in sync at once, and always allowed to take over.
                    "--repl-diskless-sync-delay", "0", "--cluster-replica-validity-factor", "0",
                    // The other slots stay served while one primary is down.
                    "--cluster-require-full-coverage", "no",
                ];
                Proc::spawn(port, &args)
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create.args(["--cluster-replicas", "1", "--cluster-yes"]).output().expect("redis-cli runs");
        assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let cluster = Cluster { nodes, _dir: dir };
        cluster.await_healthy(primaries);
        cluster
    }

    /// Waits until every live node sees the cluster ok with `primaries`
    /// primaries, each with a replica in sync.
    pub fn await_healthy(&self, primaries: usize) {
        eventually(Duration::from_secs(30), "a healthy cluster", || {
            self.live().all(|n| {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut n.conn()).unwrap_or_default();
                info.contains("cluster_state:ok")
            }) && self.primaries().len() == primaries
                && self.replicas() == primaries
        });
    }

    pub fn live(&self) -> impl Iterator<Item = &Proc> {
        self.nodes.iter().filter(|n| n.child.is_some())
    }

    pub fn nodes_text(&self) -> String {
        let node = self.live().next().expect("a live node");
        redis::cmd("CLUSTER").arg("NODES").query(&mut node.conn()).unwrap()
    }

    pub fn primaries(&self) -> Vec<Primary> {
        let mut out: Vec<Primary> = self
            .nodes_text()
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail") && !l.contains("noaddr"))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let port = f[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
                let slots = f[8..]
                    .iter()
                    .filter(|s| !s.starts_with('['))
                    .map(|s| match s.split_once('-') {
                        Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                        None => (s.parse().unwrap(), s.parse().unwrap()),
                    })
                    .collect::<Vec<(u16, u16)>>();
                (!slots.is_empty()).then(|| Primary { port, id: f[0].to_string(), slots })
            })
            .collect();
        out.sort_by_key(|p| p.slots[0].0);
        out
    }

    /// Replicas in sync with their primary.
    pub fn replicas(&self) -> usize {
        self.live()
            .filter(|n| {
                let info: String = redis::cmd("INFO").arg("replication").query(&mut n.conn()).unwrap_or_default();
                info.contains("role:slave") && info.contains("master_link_status:up")
            })
            .count()
    }

    pub fn owner(&self, slot: u16) -> Primary {
        self.primaries().into_iter().find(|p| p.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))).expect("slot is served")
    }

    pub fn node(&self, port: u16) -> &Proc {
        self.nodes.iter().find(|n| n.port == port).unwrap()
    }

    pub fn kill(&mut self, port: u16) {
        self.nodes.iter_mut().find(|n| n.port == port).unwrap().kill();
    }

    /// The port of the replica of the primary `id`.
    pub fn replica_of(&self, id: &str) -> u16 {
        self.nodes_text()
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() > 3 && f[2].contains("slave") && f[3] == id).then(|| f[1].split('@').next()?.rsplit(':').next()?.parse().ok())?
            })
            .expect("the primary has a replica")
    }

    /// A graceful `CLUSTER FAILOVER` run on the replica at `replica`: it
    /// takes over its primary's slots once it has caught up (returns when
    /// the cluster says so).
    pub fn failover(&self, replica: u16) {
        let ok: String = redis::cmd("CLUSTER").arg("FAILOVER").query(&mut self.node(replica).conn()).unwrap();
        assert_eq!(ok, "OK");
        eventually(Duration::from_secs(20), "the replica to take over", || self.primaries().iter().any(|p| p.port == replica));
    }

    pub fn seed(&self) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[0].port)
    }

    /// `PUBSUB SHARDCHANNELS` of one primary, without the admin planes' channel.
    pub fn shard_channels(&self, port: u16) -> Vec<String> {
        let mut v: Vec<String> = redis::cmd("PUBSUB").arg("SHARDCHANNELS").query(&mut self.node(port).conn()).unwrap();
        v.retain(|c| c != "shardcast:$nodes");
        v.sort();
        v
    }
}

/// A topic whose channel (`shardcast:<topic>`) lands in `slot`.
pub fn topic_in_slot(name: &str, slot: u16) -> String {
    let topic = format!("{name}{{{}}}", slot_tag(slot));
    assert_eq!(key_slot(format!("shardcast:{topic}").as_bytes()), slot);
    topic
}

/// A primary, its replica and one Sentinel monitoring them as `mymaster`.
pub struct SentinelSetup {
    pub primary: Proc,
    pub replica: Proc,
    pub sentinel: Proc,
    _dir: tempfile::TempDir,
}

impl SentinelSetup {
    pub fn start() -> SentinelSetup {
        let dir = tempfile::tempdir().unwrap();
        let plain = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
        let pport = free_port();
        let primary = Proc::spawn(pport, &[&["--port", &pport.to_string()][..], &plain].concat());
        let rport = free_port();
        let replica = Proc::spawn(rport, &[&["--port", &rport.to_string(), "--replicaof", "127.0.0.1", &pport.to_string()][..], &plain].concat());
        eventually(Duration::from_secs(10), "the replica in sync", || {
            let info: String = redis::cmd("INFO").arg("replication").query(&mut replica.conn()).unwrap_or_default();
            info.contains("master_link_status:up")
        });
        let sport = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sport}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {pport} 1\nsentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\nsentinel parallel-syncs mymaster 1\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let sentinel = Proc::spawn(sport, &[conf.to_str().unwrap(), "--sentinel"]);
        SentinelSetup { primary, replica, sentinel, _dir: dir }
    }
}

