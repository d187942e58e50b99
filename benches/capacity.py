#!/usr/bin/env python3
"""Capacity model of shardcast (issue 24): what a connection costs, measured
at a few connection counts, fitted to a line and extrapolated to 1M.

Usage (from the repository root, release binaries built, nothing else
running; ~20 minutes with the defaults, every step bounded by a timeout):

    python3 benches/capacity.py                      # 5k, 10k, 19k x 1 and 2 shards
    python3 benches/capacity.py --points 2000,4000 --shards 1 --window 5   # quick look
    python3 benches/capacity.py --report-only benches/results/capacity-2026-12-06.json  # tables, plot again

Writes (``--out`` prefix, default benches/results/capacity-DATE): ``.json``
(every run's snapshots and reports, the fits and the model), ``.csv`` (one row
per shards x N), ``.md`` (the tables printed at the end) and
``--svg`` (default benches/capacity.svg: memory per connection, broadcast
time and heartbeat CPU against connections), and prints the Markdown tables
that benches/README.md quotes. Standard library only (no matplotlib, no numpy).

For each shard count (1: server ``taskset -c 0 --shards 1``, generator and this
script on CPU 1; 2: ``--shards 2`` with ``[server] pin_cores = false``, server,
generator and this script floating over both cores) and each N it runs:

1. ``shardcast-bench idle --connections N --topics 1`` against a server with
   heartbeats off (``interval_ms = 0, timeout_ms = 0``), then again with
   ``interval_ms = 1000``. While the connections are held it measures the
   server's CPU over ``--window`` seconds (sum of its threads'
   /proc/PID/task/*/schedstat run time) and the pings it sent
   (``shardcast_socket_writes_total`` from /metrics), then memory: the
   server's VmRSS, /proc/meminfo (Slab, SUnreclaim, PageTables, ...),
   /proc/net/sockstat (TCP mem pages), /proc/slabinfo per cache, and
   ``ss -tmn`` skmem sums for the server's sockets (sport = its port) and the
   generator's (dport = its port), each against a snapshot taken before the
   bench started. The connect phase is timed from /proc/net/sockstat (TCP
   inuse rising by 2N: both ends are on this host), with the server's CPU
   over it: accepts per second and per server CPU-second.
2. ``shardcast-bench fanout --subscribers N --topics 1 --rate 2`` (heartbeats
   off): one 64 B message every 500 ms to all N; the latency histogram is per
   delivery, from the publish's send time, so its max is the slowest message's
   broadcast time (all N reached). Server CPU per message = CPU / messages.
3. Once per shard count: ``connect`` (64 loops of connect, upgrade, welcome,
   subscribe, ack, close) and ``fanout --subscribers 1000 --max`` (window 8).

Between runs it waits (at most 70 s) for the previous run's TIME_WAIT
sockets to expire, so that their slab does not disappear under the next
measurement. Connections come from ``--sources`` loopback addresses
(127.0.0.2 ...), so ephemeral ports never run out.
"""

import argparse
import datetime
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

PAGE = os.sysconf("SC_PAGE_SIZE")


# ----------------------------------------------------------------- /proc

def read(path):
    with open(path) as f:
        return f.read()


def meminfo():
    out = {}
    for line in read("/proc/meminfo").splitlines():
        k, v = line.split(":", 1)
        out[k] = int(v.split()[0]) * 1024
    return out


def sockstat():
    """TCP: inuse, orphan, tw, alloc, mem (pages)."""
    for line in read("/proc/net/sockstat").splitlines():
        if line.startswith("TCP:"):
            f = line.split()[1:]
            return {f[i]: int(f[i + 1]) for i in range(0, len(f), 2)}
    return {}


def slabinfo():
    """name -> (bytes of its slabs, bytes of its active objects, active
    objects, object size)."""
    out = {}
    try:
        lines = read("/proc/slabinfo").splitlines()[2:]
    except OSError:
        return out
    for line in lines:
        f = line.split()
        name, active, _num, size, _per, pages = f[0], int(f[1]), int(f[2]), int(f[3]), int(f[4]), int(f[5])
        slabs = int(f[f.index("slabdata") + 2])
        out[name] = (slabs * pages * PAGE, active * size, active, size)
    return out


def proc_status(pid):
    out = {}
    for line in read(f"/proc/{pid}/status").splitlines():
        if line.startswith(("VmRSS:", "VmPTE:", "VmData:", "RssAnon:")):
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0]) * 1024
    return out


def cpu_ticks_seconds(pid):
    """utime + stime of a process (all its threads), in seconds."""
    s = read(f"/proc/{pid}/stat")
    f = s[s.rfind(")") + 2:].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """On-CPU time of all of a process's threads, ns-accurate (schedstat)."""
    total = 0
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                total += int(read(f"/proc/{pid}/task/{t}/schedstat").split()[0])
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        return cpu_ticks_seconds(pid)
    return total / 1e9 if total else cpu_ticks_seconds(pid)


SKMEM = re.compile(r"skmem:\(([^)]*)\)")


def ss_sums(port):
    """skmem sums of established TCP sockets: the server's (sport) and the
    generator's (dport)."""
    out = {}
    for side, flt in (("server", f"( sport = :{port} )"), ("generator", f"( dport = :{port} )")):
        sums = {"count": 0}
        try:
            text = subprocess.run(["ss", "-tmnH", "state", "established", flt], capture_output=True, text=True, timeout=60).stdout
        except subprocess.TimeoutExpired:
            text = ""
        for m in SKMEM.finditer(text):
            sums["count"] += 1
            for item in m.group(1).split(","):
                k = re.match(r"[a-z]+", item).group(0)
                sums[k] = sums.get(k, 0) + int(item[len(k):])
        out[side] = sums
    return out


def snapshot(pid, port, with_ss):
    snap = {
        "t": time.time(),
        "proc": proc_status(pid),
        "meminfo": meminfo(),
        "sockstat": sockstat(),
        "slab": slabinfo(),
    }
    if with_ss:
        snap["ss"] = ss_sums(port)
    return snap


def metrics(admin):
    """Sum over shards of each counter/gauge in /metrics."""
    out = {}
    try:
        text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
    except Exception:
        return out
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        except ValueError:
            pass
    return out


# ----------------------------------------------------------------- processes

class Server:
    def __init__(self, args, shards, hb_ms, tmp):
        self.shards = shards
        cfg = os.path.join(tmp, f"server-{shards}-{hb_ms}.toml")
        with open(cfg, "w") as f:
            f.write(
                "[limits]\npublish_rate = 0\n\n[log]\nlevel = \"warn\"\n\n"
                f"[server]\nmax_connections = 19500\npin_cores = {'true' if shards == 1 else 'false'}\n\n"
                f"[heartbeat]\ninterval_ms = {hb_ms}\ntimeout_ms = {60000 if hb_ms else 0}\n"
            )
        cmd = [args.bin + "/shardcast", "--config", cfg, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--shards", str(shards)]
        if shards == 1:
            cmd = ["taskset", "-c", "0"] + cmd
        self.out_path = os.path.join(tmp, "server.out")
        self.err_path = os.path.join(tmp, "server.err")
        self.proc = subprocess.Popen(cmd, stdout=open(self.out_path, "w"), stderr=open(self.err_path, "a"), start_new_session=True)
        self.pid = self.proc.pid
        self.addr = self.admin = None
        deadline = time.time() + 15
        while time.time() < deadline:
            text = read(self.out_path)
            m = re.search(r"^listening on ws://(\S+)", text, re.M)
            a = re.search(r"^admin listening on http://(\S+)", text, re.M)
            if m and a:
                self.addr, self.admin = m.group(1), a.group(1)
                break
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if not self.addr:
            self.stop()
            raise RuntimeError(f"server did not start: {read(self.err_path)[-2000:]}")
        self.port = int(self.addr.rsplit(":", 1)[1])
        time.sleep(1.0)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def bench_cmd(args, shards, scenario, server, extra):
    cmd = [args.bin + "/shardcast-bench", scenario, "--url", f"ws://{server.addr}/ws", "--server-pid", str(server.pid), "--json", "--sources", str(args.sources)] + extra
    return (["taskset", "-c", "1"] + cmd) if shards == 1 else cmd


def run_bench(cmd, timeout):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    for line in p.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"bench failed ({p.returncode}): {p.stderr[-2000:]}")


def wait_quiet(base_inuse, max_wait=70):
    """Until the previous run's sockets are closed and (with a long enough
    max_wait) its TIME_WAIT sockets have expired."""
    deadline = time.time() + max_wait
    while time.time() < deadline:
        s = sockstat()
        if s.get("inuse", 0) <= base_inuse + 50 and (max_wait < 60 or s.get("tw", 0) < 2000):
            return
        time.sleep(1)


# ----------------------------------------------------------------- runs

def idle_run(args, shards, n, hb_ms, tmp):
    server = Server(args, shards, hb_ms, tmp)
    try:
        before = snapshot(server.pid, server.port, True)
        base_inuse = before["sockstat"]["inuse"]
        hold = 3 + args.window + 6 + n / 4000  # settle + CPU window + memory snapshot + margin
        cmd = bench_cmd(args, shards, "idle", server, ["--connections", str(n), "--topics", "1", "--warmup", "1", "--duration", str(int(hold))])
        bench = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The connect phase, from sockstat (both ends of each connection count).
        t_start = t_end = None
        cpu_start = cpu_end = gen_start = gen_end = None
        deadline = time.time() + 120
        while time.time() < deadline:
            inuse = sockstat().get("inuse", 0)
            now = time.time()
            if t_start is None and inuse > base_inuse + 2:
                t_start, cpu_start = now, cpu_seconds(server.pid)
                gen_start = cpu_ticks_seconds(bench.pid)
            if inuse >= base_inuse + 2 * n:
                t_end, cpu_end = now, cpu_seconds(server.pid)
                gen_end = cpu_ticks_seconds(bench.pid)
                break
            if bench.poll() is not None:
                break
            time.sleep(0.01)
        if t_end is None:
            bench.kill()
            raise RuntimeError(f"idle {n}: not all connected ({sockstat()}): {bench.stderr.read()[-1000:] if bench.stderr else ''}")
        # Memory first (ss walks every socket: keep it out of the CPU window).
        time.sleep(3)
        after = snapshot(server.pid, server.port, True)
        time.sleep(1)
        m0, c0, t0 = metrics(server.admin), cpu_seconds(server.pid), time.time()
        time.sleep(args.window)
        m1, c1, t1 = metrics(server.admin), cpu_seconds(server.pid), time.time()
        try:
            out, err = bench.communicate(timeout=hold + 60)
        except subprocess.TimeoutExpired:
            bench.kill()
            out, err = bench.communicate()
        report = next((json.loads(l) for l in out.splitlines()[::-1] if l.startswith("{")), None)
        pings = m1.get("shardcast_socket_writes_total", 0) - m0.get("shardcast_socket_writes_total", 0)
        return {
            "kind": "idle", "shards": shards, "n": n, "heartbeat_ms": hb_ms,
            "connected": m1.get("shardcast_connections"),
            "connect_seconds": t_end - t_start,
            "connect_server_cpu_seconds": cpu_end - cpu_start,
            "connect_generator_cpu_seconds": gen_end - gen_start,
            "window_seconds": t1 - t0,
            "server_cpu_seconds": c1 - c0,
            "socket_writes": pings,
            "before": before, "after": after,
            "bench": report,
        }
    finally:
        server.stop()


def fanout_run(args, shards, n, tmp):
    server = Server(args, shards, 0, tmp)
    try:
        base = sockstat()["inuse"]
        extra = ["--subscribers", str(n), "--topics", "1", "--publishers", "1", "--payload", "64", "--rate", str(args.rate), "--warmup", "2", "--duration", str(args.window)]
        r = run_bench(bench_cmd(args, shards, "fanout", server, extra), timeout=180 + n / 200)
        return {"kind": "fanout", "shards": shards, "n": n, "base_inuse": base, "bench": r}
    finally:
        server.stop()


def once_runs(args, shards, tmp):
    out = []
    server = Server(args, shards, 0, tmp)
    try:
        r = run_bench(bench_cmd(args, shards, "connect", server, ["--concurrency", "64", "--warmup", "1", "--duration", str(args.window)]), timeout=120)
        out.append({"kind": "connect", "shards": shards, "bench": r})
    finally:
        server.stop()
    wait_quiet(baseline_inuse(), 20)
    server = Server(args, shards, 0, tmp)
    try:
        r = run_bench(bench_cmd(args, shards, "fanout", server, ["--subscribers", "1000", "--max", "--window", "8", "--warmup", "1", "--duration", str(args.window)]), timeout=120)
        out.append({"kind": "fanout_max", "shards": shards, "bench": r})
    finally:
        server.stop()
    return out


# ----------------------------------------------------------------- analysis

# Not a held connection's: TIME_WAIT and half-open sockets of earlier runs, and
# the /proc inodes made by whoever lists /proc/PID/fd (reclaimable; on this VM
# something outside the benchmark lists every process's descriptors every few
# seconds, as a monitoring agent's open-files count does).
TRANSIENT = ("tw_sock_", "request_sock_", "proc_inode_cache")


def kernel_memory(run):
    """Kernel memory the held connections added (both ends, bytes)."""
    b, a, n = run["before"], run["after"], run["n"]
    mi = {k: a["meminfo"][k] - b["meminfo"][k] for k in ("Slab", "SUnreclaim", "SReclaimable", "PageTables", "KernelStack", "Percpu", "MemAvailable", "MemFree") if k in a["meminfo"]}
    tcp_mem = (a["sockstat"].get("mem", 0) - b["sockstat"].get("mem", 0)) * PAGE
    caches = {}
    zero = (0, 0, 0, 0)
    for name in set(a["slab"]) | set(b["slab"]):
        if name.startswith(TRANSIENT):
            continue
        d = a["slab"].get(name, zero)[0] - b["slab"].get(name, zero)[0]
        if d:
            caches[name] = d
    # Each /proc inode comes with its dentry: not the connection's either.
    proc_inodes = a["slab"].get("proc_inode_cache", zero)[2] - b["slab"].get("proc_inode_cache", zero)[2]
    proc_bytes = a["slab"].get("proc_inode_cache", zero)[0] - b["slab"].get("proc_inode_cache", zero)[0]
    if "dentry" in caches and proc_inodes > 0:
        proc_dentries = proc_inodes * a["slab"]["dentry"][3]
        caches["dentry"] -= proc_dentries
        proc_bytes += proc_dentries
    slab_conn = sum(caches.values())
    ss_mem = {}
    for side in ("server", "generator"):
        s = a["ss"][side]
        ss_mem[side] = {"count": s["count"], "held": sum(s.get(k, 0) for k in ("r", "t", "f", "w", "o", "bl")), "rb": s.get("rb", 0), "tb": s.get("tb", 0)}
    top = sorted(caches.items(), key=lambda kv: -kv[1])[:12]
    # The server's end: half of the slab (each connection is one accepted and
    # one connected socket, the same objects: TCP sock, inode, dentry, file,
    # epoll item), plus what its own sockets hold in buffers (ss).
    server_kernel = slab_conn / 2 + ss_mem["server"]["held"]
    return {
        "meminfo_delta": mi,
        "tcp_mem_bytes": tcp_mem,
        "slab_excl_timewait": slab_conn,
        "slab_proc_entries": proc_bytes,
        "slab_top_caches": top,
        "ss": ss_mem,
        "user_rss_bytes": a["proc"]["VmRSS"] - b["proc"]["VmRSS"],
        "server_pte_bytes": a["proc"].get("VmPTE", 0) - b["proc"].get("VmPTE", 0),
        "kernel_both_ends_per_conn": (slab_conn + tcp_mem) / n,
        "kernel_server_per_conn": server_kernel / n,
        "user_per_conn": (a["proc"]["VmRSS"] - b["proc"]["VmRSS"]) / n,
    }


def fit(xs, ys):
    """Least squares y = a + b x: (a, b, r2)."""
    n = len(xs)
    if n < 2:
        return (ys[0] if ys else 0.0, 0.0, float("nan"))
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    b = sxy / sxx if sxx else 0.0
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    r2 = 1 - ss_res / ss_tot if ss_tot else float("nan")
    return (a, b, r2)


def analyse(data):
    rows = []
    by = {}
    for r in data["runs"]:
        by.setdefault((r["kind"], r["shards"], r.get("n"), r.get("heartbeat_ms")), r)
    for shards in data["shards"]:
        for n in data["points"]:
            off = by.get(("idle", shards, n, 0))
            on = by.get(("idle", shards, n, 1000))
            fo = by.get(("fanout", shards, n, None))
            row = {"shards": shards, "n": n}
            if off:
                k = kernel_memory(off)
                row.update({
                    "user_rss_bytes": k["user_rss_bytes"], "user_per_conn": k["user_per_conn"],
                    "bench_rss_per_conn": (off["bench"] or {}).get("details", {}).get("server_rss_per_connection_bytes"),
                    "slab_bytes": k["slab_excl_timewait"], "meminfo_slab_bytes": k["meminfo_delta"].get("Slab"),
                    "slab_proc_entries_bytes": k["slab_proc_entries"],
                    "sunreclaim_bytes": k["meminfo_delta"].get("SUnreclaim"), "tcp_mem_bytes": k["tcp_mem_bytes"],
                    "pagetables_bytes": k["meminfo_delta"].get("PageTables"),
                    "ss_server_held": k["ss"]["server"]["held"], "ss_generator_held": k["ss"]["generator"]["held"],
                    "ss_server_count": k["ss"]["server"]["count"],
                    "kernel_both_per_conn": k["kernel_both_ends_per_conn"], "kernel_server_per_conn": k["kernel_server_per_conn"],
                    "kernel_server_bytes": k["kernel_server_per_conn"] * n,
                    "memavailable_drop_per_conn": -k["meminfo_delta"].get("MemAvailable", 0) / n,
                    "slab_top": k["slab_top_caches"],
                    "cpu_off": off["server_cpu_seconds"] / off["window_seconds"],
                    "accept_seconds": off["connect_seconds"], "accept_rate": n / off["connect_seconds"] if off["connect_seconds"] else None,
                    "accept_cpu_seconds": off["connect_server_cpu_seconds"],
                    "accept_per_cpu_s": n / off["connect_server_cpu_seconds"] if off["connect_server_cpu_seconds"] else None,
                    "accept_generator_cpu_seconds": off["connect_generator_cpu_seconds"],
                })
            if on:
                k = kernel_memory(on)
                row.update({"user_per_conn_hb": k["user_per_conn"], "kernel_server_per_conn_hb": k["kernel_server_per_conn"],
                            "cpu_on": on["server_cpu_seconds"] / on["window_seconds"],
                            "pings_per_s": on["socket_writes"] / on["window_seconds"],
                            "connected_hb": on["connected"]})
                if off:
                    row["hb_cpu"] = row["cpu_on"] - row["cpu_off"]
                    row["us_per_ping"] = row["hb_cpu"] / row["pings_per_s"] * 1e6 if row["pings_per_s"] else None
            if fo:
                b = fo["bench"]
                msgs = b["ops"] / n if n else 0
                lat = b.get("latency") or {}
                cpu = (b.get("server") or {}).get("cpu_seconds", 0)
                row.update({
                    "bc_deliveries": b["ops"], "bc_messages": msgs, "bc_lost": b["lost"],
                    "bc_p50_ms": lat.get("p50_us", 0) / 1e3, "bc_p99_ms": lat.get("p99_us", 0) / 1e3,
                    "bc_p999_ms": lat.get("p999_us", 0) / 1e3, "bc_max_ms": lat.get("max_us", 0) / 1e3,
                    "bc_cpu_per_msg_ms": cpu / msgs * 1e3 if msgs else None,
                    "bc_cpu_per_delivery_us": cpu / b["ops"] * 1e6 if b["ops"] else None,
                    "bc_generator_cpu": b["generator_cpu_seconds"] / b["seconds"],
                })
                if off and msgs:
                    net = cpu - row["cpu_off"] * b["seconds"]
                    row["bc_net_cpu_per_msg_ms"] = net / msgs * 1e3
            rows.append(row)
    fits = {}
    for shards in data["shards"]:
        rs = [r for r in rows if r["shards"] == shards]
        for key in ("user_rss_bytes", "kernel_server_bytes", "slab_bytes", "tcp_mem_bytes", "hb_cpu", "bc_max_ms", "bc_p999_ms", "bc_cpu_per_msg_ms", "accept_seconds", "accept_cpu_seconds", "pings_per_s"):
            pts = [(r["n"], r[key]) for r in rs if r.get(key) is not None]
            if len(pts) >= 2:
                a, b, r2 = fit([p[0] for p in pts], [p[1] for p in pts])
                fits[f"{shards}:{key}"] = {"intercept": a, "slope": b, "r2": r2, "at_1m": a + b * 1e6}
    once = {}
    for r in data["runs"]:
        if r["kind"] in ("connect", "fanout_max"):
            b = r["bench"]
            once[f"{r['shards']}:{r['kind']}"] = {
                "ops_per_s": b["ops_per_second"], "ops_per_cpu_s": b.get("ops_per_server_cpu_second"),
                "server_cpu_percent": (b.get("server") or {}).get("cpu_percent"),
                "generator_cpu_percent": b["generator_cpu_seconds"] / b["seconds"] * 100,
                "p99_ms": ((b.get("latency") or {}).get("p99_us") or 0) / 1e3,
                "failed": b.get("details", {}).get("failed"),
            }
    return rows, fits, once


# ----------------------------------------------------------------- output

def model(rows, fits, once, shards=1):
    """The 1M extrapolation, from the one-shard fits."""
    f = lambda k: fits.get(f"{shards}:{k}", {})
    m = {}
    m["user_per_conn"] = f("user_rss_bytes").get("slope")
    m["kernel_server_per_conn"] = f("kernel_server_bytes").get("slope")
    m["kernel_both_per_conn"] = (f("slab_bytes").get("slope") or 0) + (f("tcp_mem_bytes").get("slope") or 0)
    m["memory_1m_gib"] = ((m["user_per_conn"] or 0) + (m["kernel_server_per_conn"] or 0)) * 1e6 / 2**30
    pings = f("pings_per_s").get("slope") or 1
    hb = f("hb_cpu").get("slope")
    m["us_per_ping"] = hb / pings * 1e6 if hb is not None else None
    m["hb_cores_1m_25s"] = m["us_per_ping"] * 1e6 / 25 / 1e6 if m["us_per_ping"] else None
    m["bc_max_ms_1m_one_core"] = f("bc_max_ms").get("at_1m")
    m["bc_cpu_per_delivery_us"] = (f("bc_cpu_per_msg_ms").get("slope") or 0) * 1e3
    m["bc_cpu_per_msg_1m_s"] = f("bc_cpu_per_msg_ms").get("at_1m", 0) / 1e3
    m["accept_per_cpu_s"] = 1 / f("accept_cpu_seconds")["slope"] if f("accept_cpu_seconds").get("slope") else None
    m["accept_per_s"] = 1 / f("accept_seconds")["slope"] if f("accept_seconds").get("slope") else None
    c = once.get(f"{shards}:connect", {})
    m["connect_cycle_per_cpu_s"] = c.get("ops_per_cpu_s")
    fm = once.get(f"{shards}:fanout_max", {})
    m["batched_deliveries_per_cpu_s"] = fm.get("ops_per_cpu_s")
    return m


def fmt(v, d=0):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:,.{d}f}"


def markdown(data, rows, fits, once):
    L = []
    L.append("| shards | connections | server RSS growth | user B/conn | kernel, both ends: slab + TCP mem, B/conn | kernel, server's end, B/conn | ss skmem held: server / generator, B/conn | accept: s (conn/s; per server CPU-s) |")
    L.append("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "user_per_conn" not in r:
            continue
        n = r["n"]
        L.append(f"| {r['shards']} | {n:,} | {fmt(r['user_rss_bytes'] / 2**20, 1)} MiB | {fmt(r['user_per_conn'])} | "
                 f"{fmt(r['kernel_both_per_conn'])} ({fmt(r['slab_bytes'] / n)} + {fmt(r['tcp_mem_bytes'] / n)}; meminfo Slab {fmt((r['meminfo_slab_bytes'] or 0) / n)}, SUnreclaim {fmt((r['sunreclaim_bytes'] or 0) / n)}) | "
                 f"{fmt(r['kernel_server_per_conn'])} | {fmt(r['ss_server_held'] / n)} / {fmt(r['ss_generator_held'] / n)} | "
                 f"{fmt(r['accept_seconds'], 2)} ({fmt(r['accept_rate'])}; {fmt(r['accept_per_cpu_s'])}) |")
    L.append("")
    L.append("| shards | connections | server CPU, heartbeats off | at 1 s interval | pings/s | µs per ping | broadcast: p50 / p99.9 / max ms | server CPU per message | per delivery | generator CPU |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        L.append(f"| {r['shards']} | {r['n']:,} | {fmt((r.get('cpu_off') or 0) * 100, 2)}% | {fmt((r.get('cpu_on') or 0) * 100, 2)}% | {fmt(r.get('pings_per_s'))} | {fmt(r.get('us_per_ping'), 2)} | "
                 f"{fmt(r.get('bc_p50_ms'), 1)} / {fmt(r.get('bc_p999_ms'), 1)} / {fmt(r.get('bc_max_ms'), 1)} | {fmt(r.get('bc_cpu_per_msg_ms'), 1)} ms | {fmt(r.get('bc_cpu_per_delivery_us'), 2)} µs | {fmt((r.get('bc_generator_cpu') or 0) * 100)}% |")
    L.append("")
    L.append("| fit (y = a + b·N) | shards | slope b | intercept a | R² | at 1M |")
    L.append("|---|---|---|---|---|---|")
    names = {"user_rss_bytes": ("server RSS growth, bytes", 0), "kernel_server_bytes": ("kernel, server's end, bytes", 0),
             "slab_bytes": ("slab, both ends, bytes", 0), "tcp_mem_bytes": ("TCP mem, both ends, bytes", 0),
             "hb_cpu": ("heartbeat CPU at 1 s, cores", 9), "pings_per_s": ("pings per second", 4),
             "bc_max_ms": ("broadcast max, ms", 6), "bc_p999_ms": ("broadcast p99.9, ms", 6),
             "bc_cpu_per_msg_ms": ("server CPU per message, ms", 6), "accept_seconds": ("connect phase, s", 7),
             "accept_cpu_seconds": ("server CPU in the connect phase, s", 8)}
    for key, (label, d) in names.items():
        for shards in data["shards"]:
            f = fits.get(f"{shards}:{key}")
            if f:
                L.append(f"| {label} | {shards} | {f['slope']:.4g} | {fmt(f['intercept'], 3 if abs(f['intercept']) < 10 else 0)} | {f['r2']:.4f} | {fmt(f['at_1m'], 2 if abs(f['at_1m']) < 1000 else 0)} |")
    L.append("")
    L.append("| once per shard count | shards | ops/s | ops per server CPU-s | server CPU | generator CPU | p99 |")
    L.append("|---|---|---|---|---|---|---|")
    for k, v in sorted(once.items()):
        s, kind = k.split(":")
        L.append(f"| {kind} | {s} | {fmt(v['ops_per_s'])} | {fmt(v['ops_per_cpu_s'])} | {fmt(v['server_cpu_percent'])}% | {fmt(v['generator_cpu_percent'])}% | {fmt(v['p99_ms'], 1)} ms |")
    for shards in data["shards"]:
        L.append("")
        L.append(f"Model from the {shards}-shard fits: " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in model(rows, fits, once, shards).items()}))
    return "\n".join(L)


def nice_step(span, ticks=5):
    raw = span / ticks
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def svg_plot(path, data, rows, fits):
    """Three panels against connections: memory per connection, broadcast
    time, heartbeat CPU. Colour = series, solid/circles = 1 shard,
    dashed/squares = 2 shards."""
    W, H = 1260, 470
    panels = [
        ("Memory per connection (bytes)", [("user: server RSS growth", "user_per_conn", None),
                                            ("kernel: server's end", "kernel_server_per_conn", None),
                                            ("kernel: both ends (loopback)", "kernel_both_per_conn", None)]),
        ("Time to deliver one message to all N (ms)", [("max (last subscriber)", "bc_max_ms", "bc_max_ms"),
                                                      ("p99.9 of deliveries", "bc_p999_ms", "bc_p999_ms"),
                                                      ("p50 of deliveries", "bc_p50_ms", None)]),
        ("Heartbeat CPU, 1 ping/s per connection (% of a core)", [("server CPU, heartbeats on − off", "hb_cpu_pct", "hb_cpu")]),
    ]
    colors = ["#1f77b4", "#d62728", "#2ca02c"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="15">shardcast capacity model (issue 24): measured points and least-squares lines; '
           f'circles/solid = 1 shard, squares/dashed = 2 shards</text>']
    pw, ph, top = W / 3, 290, 55
    xmax = max(data["points"]) * 1.1
    xstep = nice_step(xmax, 4)

    def value(r, k):
        if k == "hb_cpu_pct":
            return r["hb_cpu"] * 100 if r.get("hb_cpu") is not None else None
        return r.get(k)

    for pi, (title, series) in enumerate(panels):
        x0, w = pi * pw + 70, pw - 95
        vals = [value(r, k) for r in rows for _, k, _ in series if value(r, k) is not None]
        for _, k, fk in series:
            for shards in data["shards"]:
                f = fits.get(f"{shards}:{fk}") if fk else None
                if f:
                    sc = 100 if k == "hb_cpu_pct" else 1
                    vals.append((f["intercept"] + f["slope"] * xmax) * sc)
        step = nice_step(max(vals + [1e-9]) * 1.05)
        ymax = step * math.ceil(max(vals + [1e-9]) * 1.05 / step)
        X = lambda x: x0 + w * x / xmax
        Y = lambda y: top + ph - ph * y / ymax
        out.append(f'<clipPath id="c{pi}"><rect x="{x0}" y="{top}" width="{w}" height="{ph}"/></clipPath>')
        out.append(f'<text x="{x0 + w / 2}" y="{top - 12}" text-anchor="middle" font-size="13">{title}</text>')
        t = 0.0
        while t <= ymax + 1e-9:
            lab = f"{t:,.0f}" if step >= 1 else f"{t:.{max(0, -math.floor(math.log10(step)) + 1)}f}"
            out.append(f'<line x1="{x0}" y1="{Y(t):.1f}" x2="{x0 + w}" y2="{Y(t):.1f}" stroke="#e4e4e4"/>'
                       f'<text x="{x0 - 5}" y="{Y(t) + 4:.1f}" text-anchor="end">{lab}</text>')
            t += step
        xv = 0
        while xv <= xmax:
            out.append(f'<line x1="{X(xv):.1f}" y1="{top + ph}" x2="{X(xv):.1f}" y2="{top + ph + 4}" stroke="black"/>'
                       f'<text x="{X(xv):.1f}" y="{top + ph + 17}" text-anchor="middle">{xv / 1000:g}k</text>')
            xv += xstep
        out.append(f'<line x1="{x0}" y1="{top + ph}" x2="{x0 + w}" y2="{top + ph}" stroke="black"/>'
                   f'<line x1="{x0}" y1="{top}" x2="{x0}" y2="{top + ph}" stroke="black"/>')
        out.append(f'<text x="{x0 + w / 2}" y="{top + ph + 34}" text-anchor="middle">connections</text>')
        ly = top + ph + 56
        for si, (label, k, fk) in enumerate(series):
            col = colors[si % len(colors)]
            for shards in data["shards"]:
                pts = [(r["n"], value(r, k)) for r in rows if r["shards"] == shards and value(r, k) is not None]
                dash = "" if shards == 1 else ' stroke-dasharray="6,4"'
                for x, y in pts:
                    if shards == 1:
                        out.append(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="4" fill="{col}"/>')
                    else:
                        out.append(f'<rect x="{X(x) - 4:.1f}" y="{Y(y) - 4:.1f}" width="8" height="8" fill="white" stroke="{col}" stroke-width="1.5"/>')
                if fk:
                    f = fits.get(f"{shards}:{fk}")
                    if f:
                        sc = 100 if k == "hb_cpu_pct" else 1
                        out.append(f'<line clip-path="url(#c{pi})" x1="{X(0):.1f}" y1="{Y(f["intercept"] * sc):.1f}" x2="{X(xmax):.1f}" '
                                   f'y2="{Y((f["intercept"] + f["slope"] * xmax) * sc):.1f}" stroke="{col}" stroke-width="1.2"{dash}/>')
                elif len(pts) > 1:  # join the points
                    out.append(f'<polyline clip-path="url(#c{pi})" points="{" ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in pts)}" fill="none" stroke="{col}" stroke-width="1"{dash}/>')
            out.append(f'<line x1="{x0}" y1="{ly - 4}" x2="{x0 + 22}" y2="{ly - 4}" stroke="{col}" stroke-width="2"/>'
                       f'<text x="{x0 + 28}" y="{ly}">{label}</text>')
            ly += 16
    out.append(f'<text x="{W / 2}" y="{H - 8}" text-anchor="middle" font-size="11" fill="#555">{data.get("label", "")}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out))


def write_outputs(data, args):
    rows, fits, once = analyse(data)
    data["rows"], data["fits"], data["once"] = rows, fits, once
    data["model"] = {str(s): model(rows, fits, once, s) for s in data["shards"]}
    # Keep only the slab caches that changed during a run (the rest cancel out).
    for r in data["runs"]:
        if "before" in r and "after" in r:
            names = [k for k in r["after"]["slab"] if r["after"]["slab"][k] != r["before"]["slab"].get(k)]
            for side in ("before", "after"):
                r[side]["slab"] = {k: r[side]["slab"].get(k, [0, 0, 0, 0]) for k in names}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(data, f, indent=1, default=str)
    cols = sorted({k for r in rows for k in r if k != "slab_top"}, key=lambda k: (k not in ("shards", "n"), k))
    with open(args.out + ".csv", "w") as f:
        f.write(",".join(cols) + "\n")
        for r in rows:
            f.write(",".join("" if r.get(c) is None else (f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c])) for c in cols) + "\n")
    svg_plot(args.svg, data, rows, fits)
    md = markdown(data, rows, fits, once)
    with open(args.out + ".md", "w") as f:
        f.write(md + "\n")
    print(md)
    print("\nslab caches that grew most (bytes per connection, both ends), per run:")
    for r in rows:
        if r.get("slab_top"):
            print(f"  {r['shards']} shard(s), {r['n']}: " + ", ".join(f"{k} {v / r['n']:.0f}" for k, v in r["slab_top"][:8]))


# ----------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release")
    ap.add_argument("--points", default="5000,10000,19000")
    ap.add_argument("--shards", default="1,2")
    ap.add_argument("--window", type=int, default=10, help="measured seconds of each CPU window / fan-out run")
    ap.add_argument("--rate", type=float, default=2, help="broadcast messages per second")
    ap.add_argument("--sources", type=int, default=4, help="loopback source addresses for the generator")
    ap.add_argument("--out", default=f"benches/results/capacity-{datetime.date.today().isoformat()}",
                    help="path prefix of the .json, .csv and .md written")
    ap.add_argument("--svg", default="benches/capacity.svg")
    ap.add_argument("--max-minutes", type=float, default=60, help="stop starting new runs after this long")
    ap.add_argument("--report-only", metavar="JSON", help="redo the tables and the plot from a capacity.json")
    args = ap.parse_args()

    if args.report_only:
        with open(args.report_only) as f:
            data = json.load(f)
        write_outputs(data, args)
        return

    points = [int(x) for x in args.points.split(",")]
    shard_list = [int(x) for x in args.shards.split(",")]
    if max(points) + 100 > os.sysconf("SC_OPEN_MAX"):
        sys.exit(f"{max(points)} connections need more descriptors than this process's limit ({os.sysconf('SC_OPEN_MAX')})")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    data = {"date": datetime.date.today().isoformat(), "commit": commit, "points": points, "shards": shard_list,
            "window": args.window, "rate": args.rate, "sources": args.sources, "runs": [],
            "host": {"cpus": os.cpu_count(), "kernel": os.uname().release, "mem_total": meminfo()["MemTotal"],
                     "tcp_rmem": read("/proc/sys/net/ipv4/tcp_rmem").split(), "tcp_wmem": read("/proc/sys/net/ipv4/tcp_wmem").split()}}
    data["label"] = f"{data['date']}, commit {commit}, {os.cpu_count()} vCPUs, loopback; benches/capacity.py"
    started = time.time()
    tmp = tempfile.mkdtemp(prefix="capacity-")
    try:
        for shards in shard_list:
            # This script runs beside the generator: CPU 1 when the server has CPU 0.
            os.sched_setaffinity(0, {1} if shards == 1 else set(range(os.cpu_count())))
            for n in points:
                for what in ("idle0", "idle1000", "fanout"):
                    if (time.time() - started) / 60 > args.max_minutes:
                        print(f"--max-minutes reached, skipping {shards}/{n}/{what}", file=sys.stderr)
                        continue
                    # Idle runs measure memory: let the last run's TIME_WAIT sockets expire first.
                    wait_quiet(baseline_inuse(), 70 if what.startswith("idle") else 20)
                    t = time.time()
                    try:
                        if what == "fanout":
                            r = fanout_run(args, shards, n, tmp)
                        else:
                            r = idle_run(args, shards, n, int(what[4:]), tmp)
                        data["runs"].append(r)
                        print(f"[{time.time() - started:6.0f} s] {shards} shard(s), {n}: {what} done in {time.time() - t:.0f} s", file=sys.stderr)
                    except Exception as e:  # keep the other points
                        print(f"{shards} shard(s), {n}, {what}: FAILED: {e}", file=sys.stderr)
                        data.setdefault("failures", []).append(f"{shards}/{n}/{what}: {e}")
            if (time.time() - started) / 60 <= args.max_minutes:
                wait_quiet(baseline_inuse())
                try:
                    data["runs"].extend(once_runs(args, shards, tmp))
                except Exception as e:
                    data.setdefault("failures", []).append(f"{shards}/once: {e}")
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count())))
        write_outputs(data, args)


_BASE = []


def baseline_inuse():
    """TCP sockets in use when this script started (other processes')."""
    if not _BASE:
        _BASE.append(sockstat().get("inuse", 0))
    return _BASE[0]


if __name__ == "__main__":
    baseline_inuse()
    main()
