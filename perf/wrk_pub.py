#!/usr/bin/env python3
"""Publish-only load with wrk: the issue's own method for CPU per publish.

wrk (one thread, N keep-alive connections, unthrottled) POSTs one publish body
per request to the server; the server's CPU (user and system, from
/proc/PID/stat) over the run divided by the requests answered is its CPU per
publish. wrk is far lighter than the load client's blocking publisher threads,
so the server, not the client, is the bottleneck: the figure is the server's
own cost per publish at full speed. Writes one JSON report in the load
client's shape (the fields summarize.py reads).
"""

import argparse
import json
import os
import re
import subprocess
import tempfile
import time


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])  # utime, stime


def lua_string(s):
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="publish URL (loopback only)")
    ap.add_argument("--body", required=True, help="body; {payload} is replaced")
    ap.add_argument("--payload-bytes", type=int, default=100)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--duration", type=int, default=10, help="seconds")
    ap.add_argument("--server-pid", type=int, required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--label", default="pubwrk")
    a = ap.parse_args()
    host = re.match(r"https?://([^/:]+)", a.url)
    if not host or not host.group(1).startswith("127."):
        raise SystemExit("wrk_pub.py: the URL must be on loopback (127.0.0.0/8)")
    if not 1 <= a.duration <= 600:
        raise SystemExit("wrk_pub.py: --duration must be within 1..600 s")
    payload = ("T0S0P" + "x" * a.payload_bytes)[: max(a.payload_bytes, 5)]
    body = a.body.replace("{payload}", payload)
    script = "\n".join(
        [
            'wrk.method = "POST"',
            f"wrk.body = {lua_string(body)}",
            'wrk.headers["Content-Type"] = "application/json"',
            "",
        ]
    )
    tick = os.sysconf("SC_CLK_TCK")
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(script)
        lua.flush()
        u0, s0 = cpu_ticks(a.server_pid)
        t0 = time.monotonic()
        proc = subprocess.Popen(
            ["wrk", "-t1", f"-c{a.connections}", f"-d{a.duration}s", "--latency",
             "-s", lua.name, a.url],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.monotonic() - t0
        u1, s1 = cpu_ticks(a.server_pid)
    if status != 0:
        raise SystemExit(f"wrk failed:\n{out}")
    m = re.search(r"(\d+) requests in", out)
    if not m:
        raise SystemExit(f"wrk printed no request count:\n{out}")
    requests = int(m.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (
        sum(int(x) for x in sock.groups()) if sock else 0
    )
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    scale = {"us": 1, "ms": 1e3, "s": 1e6}
    rtt_p99 = float(p99.group(1)) * scale[p99.group(2)] if p99 else None
    user_s, sys_s = (u1 - u0) / tick, (s1 - s0) / tick
    per = 1e6 / requests if requests else 0.0
    report = {
        "label": a.label,
        "scenario": "pubwrk",
        "publishes_per_sec": requests / a.duration,
        "requests_per_sec": requests / a.duration,
        "publish_errors": errors,
        "publisher": {"rtt_us_p99": rtt_p99},
        "server": {
            "cpu_seconds": user_s + sys_s,
            "cpu_us_per_publish": (user_s + sys_s) * per,
            "user_us_per_publish": user_s * per,
            "sys_us_per_publish": sys_s * per,
        },
        "client": {
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "cpu_percent": 100 * (usage.ru_utime + usage.ru_stime) / elapsed,
        },
    }
    with open(a.json, "w") as f:
        json.dump(report, f, indent=1)
    print(out)
    print(json.dumps(report["server"]))


if __name__ == "__main__":
    main()
