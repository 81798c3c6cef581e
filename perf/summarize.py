#!/usr/bin/env python3
"""Summarize a perf/compare.sh run: median and min-max spread of each figure,
per point and server, as Markdown on stdout.

    python3 perf/summarize.py perf/out/<date>

Reads <point>__<server>__r<k>.json (the load client's --json reports),
versions.txt and notes.txt from that directory. Each table has a "÷ floor"
column: the point's main figure divided by the floor's (one write per event)
median, the ratio that stays meaningful on a noisy machine. When the
publisher points (pub1, pub4, pub16, batch16) were run, a last table puts
their deliveries/s side by side per server.
"""

import json
import re
import statistics
import sys
from pathlib import Path

SERVER_ORDER = ["herald", "herald-prev", "nchan", "axum", "floor", "floor16"]

# point -> (title, what it measures, [(column, path, unit, better)]);
# the first column is the point's main figure.
# Columns of the points that measure deliveries per second.
THROUGHPUT_COLUMNS = [
    ("deliveries/s", "deliveries_per_sec", "", "high"),
    ("lost", "lost", "", "low"),
    ("p99 µs", "latency_us.p99", "µs", "low"),
    ("CPU ns/delivery", "server.cpu_ns_per_delivery", "ns", "low"),
    ("events", "events_published", "", "high"),
    ("client %", "client.max_thread_percent", "%", "low"),
]

# Columns of the points that vary the publishers (issue 11: full speed with few
# publishers): deliveries/s, and the events/s the publishers got through.
PUBLISHER_COLUMNS = [
    ("deliveries/s", "deliveries_per_sec", "", "high"),
    ("events/s", "publishes_per_sec", "", "high"),
    ("lost", "lost", "", "low"),
    ("p99 µs", "latency_us.p99", "µs", "low"),
    ("CPU ns/delivery", "server.cpu_ns_per_delivery", "ns", "low"),
    ("client %", "client.max_thread_percent", "%", "low"),
]

# Publishes only (pubonly, pubwrk): client % is the whole client.
PUBONLY_COLUMNS = [
    ("CPU µs/publish", "server.cpu_us_per_publish", "µs", "low"),
    ("publishes/s", "publishes_per_sec", "", "high"),
    ("errors", "publish_errors", "", "low"),
    ("rtt p99 µs", "publisher.rtt_us_p99", "µs", "low"),
    ("client %", "client.cpu_percent", "%", "low"),
]

POINTS = {
    "idle": (
        "idle: memory per open stream",
        "streams held open, nothing published; server RSS growth per stream, and "
        "kernel memory per stream for both ends (system-wide, so noisy): TCP buffer "
        "pages from /proc/net/sockstat and slab (socket structures) from /proc/meminfo",
        [
            ("RSS B/conn", "server.rss_per_connection", "B", "low"),
            ("kernel TCP B/conn", "kernel.tcp_mem_per_connection", "B", "low"),
            ("kernel slab B/conn", "kernel.slab_per_connection", "B", "low"),
            ("open", "connections_open", "", "high"),
            ("connects/s", "connect_rate", "", "high"),
        ],
    ),
    "low": (
        "low rate: CPU per delivered event",
        "few subscribers, a low event rate: server CPU (user+system) per delivery",
        [
            ("CPU ns/delivery", "server.cpu_ns_per_delivery", "ns", "low"),
            ("lost", "lost", "", "low"),
            ("p50 µs", "latency_us.p50", "µs", "low"),
            ("p99 µs", "latency_us.p99", "µs", "low"),
            ("deliveries/s", "deliveries_per_sec", "", "high"),
        ],
    ),
    "mid": (
        "10k subscribers at a steady rate: loss and latency",
        "publish to client receive latency at a fixed offered rate, with zero loss",
        [
            ("p99 µs", "latency_us.p99", "µs", "low"),
            ("lost", "lost", "", "low"),
            ("p50 µs", "latency_us.p50", "µs", "low"),
            ("p99.9 µs", "latency_us.p999", "µs", "low"),
            ("CPU ns/delivery", "server.cpu_ns_per_delivery", "ns", "low"),
        ],
    ),
    "throughput": (
        "throughput: 10k subscribers, publishing as fast as the server answers",
        "deliveries per second on one server core; check the client column: at "
        "~100% the client is the bottleneck, not the server",
        THROUGHPUT_COLUMNS,
    ),
    "burst": (
        "burst: 10k subscribers, several publishers at once, unthrottled",
        "like throughput, with several publish requests in flight (--pub-concurrency): "
        "events arrive faster than one write per event per subscriber can go out, "
        "which is where coalescing several events per write pays",
        THROUGHPUT_COLUMNS,
    ),
    "million": (
        "million: 10k subscribers x 100 events/s = 1,000,000 deliveries/s offered",
        "a fixed offered rate of a million deliveries per second from 16 concurrent "
        "publishers: sustained only with zero loss and a bounded p99",
        THROUGHPUT_COLUMNS,
    ),
    "pub1": (
        "pub1: 10k subscribers, one publisher, unthrottled",
        "one publish request in flight, one event per request (the throughput "
        "load): how close one publisher gets to the server's full speed",
        PUBLISHER_COLUMNS,
    ),
    "pub4": (
        "pub4: 10k subscribers, 4 publishers, unthrottled",
        "four publish requests in flight, one event each",
        PUBLISHER_COLUMNS,
    ),
    "pub16": (
        "pub16: 10k subscribers, 16 publishers, unthrottled",
        "sixteen publish requests in flight, one event each: the full speed the "
        "fewer publishers are measured against",
        PUBLISHER_COLUMNS,
    ),
    "batch16": (
        "batch16: 10k subscribers, one publisher, 16 events per request",
        "herald only (servers without batch publishes are not run): one publisher "
        "sending herald's batch, a JSON array of 16 publish objects per request; "
        "events/s counts events, not requests",
        PUBLISHER_COLUMNS,
    ),
    "pubonly": (
        "pubonly: publishes only, no subscriber",
        "16 keep-alive publishers, one event per request, unthrottled, nobody "
        "subscribed: server CPU per publish (the cost of taking an event, robust "
        "to noise) and publishes/s; client % is the whole load client (its "
        "publisher threads) in % of its core: near 100% publishes/s is bounded by "
        "the client, CPU per publish still stands",
        PUBONLY_COLUMNS,
    ),
    "pubwrk": (
        "pubwrk: publishes only, no subscriber, wrk as the client",
        "wrk (one thread, 16 keep-alive connections, one event per request, "
        "unthrottled) instead of the load client's blocking publisher threads, "
        "so that the server, not the client, sets the pace (client % is wrk's: "
        "near 100% it became the bound again); CPU per publish split into user "
        "and system time from /proc/PID/stat",
        # pubonly's, with the CPU split after the total.
        PUBONLY_COLUMNS[:1]
        + [
            ("user µs", "server.user_us_per_publish", "µs", "low"),
            ("system µs", "server.sys_us_per_publish", "µs", "low"),
        ]
        + PUBONLY_COLUMNS[1:],
    ),
    "churn": (
        "churn: connect, first bytes, close",
        "connects per second with a fixed number of concurrent connect/close loops",
        [
            ("connects/s", "churn.connects_per_sec", "", "high"),
            ("failed", "churn.cycles_failed", "", "low"),
            ("first bytes p99 µs", "churn.first_bytes_us.p99", "µs", "low"),
            ("server CPU s", "server.cpu_seconds", "s", "low"),
        ],
    ),
}

NAME = re.compile(r"^(?P<point>[a-z0-9]+)__(?P<server>[a-z0-9-]+)__r(?P<run>\d+)\.json$")

# The publisher series side by side (deliveries/s).
SERIES = ["pub1", "pub4", "pub16", "batch16"]


def get(report, path):
    value = report
    for key in path.split("."):
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return value if isinstance(value, (int, float)) else None


def fmt(v, unit=""):
    if v is None:
        return "–"
    if unit == "s":
        return f"{v:.3f}"
    if unit == "%":
        return f"{v:.0f}"
    if abs(v) >= 100 or float(v).is_integer():
        return f"{v:,.0f}"
    return f"{v:.1f}"


def cell(values, unit):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    med = statistics.median(values)
    if len(values) == 1 or min(values) == max(values):
        return fmt(med, unit)
    return f"{fmt(med, unit)} ({fmt(min(values), unit)}–{fmt(max(values), unit)})"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    runs = {}  # (point, server) -> [report]
    for f in sorted(out.glob("*.json")):
        m = NAME.match(f.name)
        if not m:
            continue
        try:
            report = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            print(f"<!-- {f.name}: unreadable ({e}) -->")
            continue
        if isinstance(report, list):  # a rate ladder: its last step
            report = report[-1] if report else {}
        runs.setdefault((m["point"], m["server"]), []).append(report)

    print(f"# herald side-by-side comparison ({out.name})\n")
    for extra in ("versions.txt", "notes.txt"):
        path = out / extra
        if path.exists():
            for line in path.read_text().splitlines():
                print(f"- {line}")
            print()
    print(
        "Median of the runs, (min–max) when they differ. Server pinned to one "
        "core, load client to another; same client for every server. "
        "÷ floor: main figure over the floor's median.\n"
    )

    points = [p for p in POINTS if any(k[0] == p for k in runs)]
    if not points:
        print("No results.")
        return
    for point in points:
        title, what, cols = POINTS[point]
        servers = sorted(
            {s for p, s in runs if p == point},
            key=lambda s: (SERVER_ORDER.index(s) if s in SERVER_ORDER else 99, s),
        )
        main_path = cols[0][1]
        floor_vals = [get(r, main_path) for r in runs.get((point, "floor"), [])]
        floor_vals = [v for v in floor_vals if v is not None]
        floor_med = statistics.median(floor_vals) if floor_vals else None

        print(f"## {title}\n")
        print(f"{what}.\n")
        header = ["server", "runs"] + [c[0] for c in cols] + ["÷ floor"]
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        notes = []
        for server in servers:
            reports = runs[(point, server)]
            row = [server, str(len(reports))]
            for _, path, unit, _ in cols:
                row.append(cell([get(r, path) for r in reports], unit))
            vals = [v for v in (get(r, main_path) for r in reports) if v is not None]
            if vals and floor_med:
                row.append(f"{statistics.median(vals) / floor_med:.2f}")
            else:
                row.append("–")
            print("| " + " | ".join(row) + " |")
            # The same warning from several runs differs only in its numbers.
            seen = {}
            for r in reports:
                for w in set(r.get("warnings", [])):
                    key = re.sub(r"\d+(\.\d+)?", "#", w)
                    seen.setdefault(key, []).append(w)
            for ws in seen.values():
                count = f" ({len(ws)} of {len(reports)} runs)" if len(reports) > 1 else ""
                notes.append(f"{server}: {max(ws)}{count}")
            failed = sum(r.get("connections_failed", 0) or 0 for r in reports)
            if failed:
                notes.append(f"{server}: {failed} connections failed over its runs")
        print()
        for n in notes:
            print(f"- {n}")
        if notes:
            print()
    series(runs)


def series(runs):
    """deliveries/s of the publisher points side by side, per server."""
    points = [p for p in SERIES if any(k[0] == p for k in runs)]
    if len(points) < 2:
        return
    servers = sorted(
        {s for p, s in runs if p in points},
        key=lambda s: (SERVER_ORDER.index(s) if s in SERVER_ORDER else 99, s),
    )
    ratio = "pub1" in points and "pub16" in points
    print("## publishers: deliveries/s by publish requests in flight\n")
    print(
        "Medians of the points above. pub1 ÷ pub16: how close one publisher "
        "comes to the server's full speed (issue 11).\n"
    )
    header = ["server"] + points + (["pub1 ÷ pub16"] if ratio else [])
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for server in servers:
        meds = {}
        for p in points:
            vals = [get(r, "deliveries_per_sec") for r in runs.get((p, server), [])]
            vals = [v for v in vals if v is not None]
            meds[p] = statistics.median(vals) if vals else None
        row = [server] + [fmt(meds[p]) for p in points]
        if ratio:
            a, b = meds.get("pub1"), meds.get("pub16")
            row.append(f"{a / b:.2f}" if a is not None and b else "–")
        print("| " + " | ".join(row) + " |")
    print()


if __name__ == "__main__":
    main()
