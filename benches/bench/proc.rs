//! The server under test: spawning it, and its CPU and memory from /proc.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// CPU seconds (user + system) and RSS of a process.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Usage {
    pub cpu_seconds: f64,
    /// Of which in user space (utime): the rest is the kernel's.
    pub user_seconds: f64,
    pub rss_bytes: u64,
}

pub fn usage(pid: u32) -> Option<Usage> {
    let (user_seconds, system_seconds) = stat_cpu_times(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(Usage { cpu_seconds: user_seconds + system_seconds, user_seconds, rss_bytes: rss_kib * 1024 })
}

/// utime + stime, in seconds, of a `/proc/.../stat` line.
fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    stat_cpu_times(stat).map(|(user, system)| user + system)
}

/// (utime, stime), in seconds, of a `/proc/.../stat` line.
fn stat_cpu_times(stat: &str) -> Option<(f64, f64)> {
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let (user, system): (u64, u64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((user as f64 / hz, system as f64 / hz))
}

/// CPU seconds (user + system) of the thread of `pid` named `name`.
pub fn thread_cpu_seconds(pid: u32, name: &str) -> Option<f64> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        return stat_cpu_seconds(&std::fs::read_to_string(task.path().join("stat")).ok()?);
    }
    None
}

/// This process's (and its reaped children's) CPU seconds.
/// CPU seconds (user + system) of the calling thread.
pub fn own_thread_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

pub fn self_cpu_seconds() -> f64 {
    let mut total = 0.0;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: getrusage fills the struct we own.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(who, &mut ru) } == 0 {
            let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            total += tv(ru.ru_utime) + tv(ru.ru_stime);
        }
    }
    total
}

/// A server started by `--spawn`; stopped with SIGTERM when dropped.
pub struct Spawned {
    child: Child,
    /// `IP:PORT` from its `listening on ws://IP:PORT` line.
    pub addr: String,
    /// `ws` or `wss`, from the same line.
    pub scheme: &'static str,
    /// `IP:PORT` of its admin listener, from the `admin listening on` line
    /// that follows at once when it has one.
    pub admin: Option<String>,
}

impl Spawned {
    pub fn start(command: &str) -> Result<Spawned, String> {
        let mut child = Command::new("sh")
            .args(["-c", &format!("exec {command}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot run {command:?}: {e}"))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let (admin_tx, admin_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok);
            let _ = tx.send(first);
            let second = lines.next().and_then(Result::ok);
            let _ = admin_tx.send(second);
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).ok().flatten().unwrap_or_default();
        let line = line.trim();
        let (scheme, addr) = match (line.strip_prefix("listening on ws://"), line.strip_prefix("listening on wss://")) {
            (Some(addr), _) => ("ws", addr),
            (_, Some(addr)) => ("wss", addr),
            _ => {
                let _ = child.kill();
                return Err(format!("{command:?} did not print `listening on ws://IP:PORT` (got {line:?})"));
            }
        };
        // Printed right after the first line, or never (no admin plane).
        let admin = admin_rx
            .recv_timeout(Duration::from_millis(300))
            .ok()
            .flatten()
            .and_then(|l| l.trim().strip_prefix("admin listening on http://").map(str::to_string));
        Ok(Spawned { addr: addr.to_string(), scheme, child, admin })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
