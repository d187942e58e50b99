#!/usr/bin/env python3
"""Medians of the JSON lines benches/targets.sh wrote: one table row per file."""
import json
import pathlib
import statistics
import sys

out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/bench-results")


def med(rows, f):
    vals = [v for v in (f(r) for r in rows) if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v, digits=0):
    return "-" if v is None else f"{v:,.{digits}f}"


print("| run | server | ops/s | ops per server CPU-s | p50 µs | p99 µs | lost+ooo | server CPU % | gen CPU % | extra |")
print("|---|---|---|---|---|---|---|---|---|---|")
for path in sorted(out.glob("*.jsonl")):
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups = {}
    for r in rows:
        server = r.get("server_name", "shardcast")
        window = r.get("details", {}).get("window")
        if window is not None:
            server += f" (window {window:.0f})"
        groups.setdefault(server, []).append(r)
    for server, rs in groups.items():
        extra = []
        d = rs[0].get("details", {})
        if "server_rss_per_connection_bytes" in d:
            extra.append("RSS/conn " + fmt(med(rs, lambda r: r["details"]["server_rss_per_connection_bytes"])) + " B")
            extra.append("idle CPU " + fmt(med(rs, lambda r: r["details"]["server_idle_cpu_percent"]), 2) + " %")
        if "offered_deliveries_per_second" in d:
            extra.append("offered " + fmt(d["offered_deliveries_per_second"]) + "/s")
        print(
            f"| {path.stem} (n={len(rs)}) | {server} | {fmt(med(rs, lambda r: r['ops_per_second']))} "
            f"| {fmt(med(rs, lambda r: r.get('ops_per_server_cpu_second')))} "
            f"| {fmt(med(rs, lambda r: (r.get('latency') or {}).get('p50_us')))} "
            f"| {fmt(med(rs, lambda r: (r.get('latency') or {}).get('p99_us')))} "
            f"| {fmt(med(rs, lambda r: r['lost'] + r['out_of_order']))} "
            f"| {fmt(med(rs, lambda r: (r.get('server') or {}).get('cpu_percent')))} "
            f"| {fmt(med(rs, lambda r: r['generator_cpu_seconds'] / r['seconds'] * 100))} "
            f"| {', '.join(extra)} |"
        )
