#!/usr/bin/env python3
"""perf/failover.py: the failover gap on a Redis Cluster with replicas.

A 3-master Redis Cluster with a replica each (6 redis-server processes on free
loopback ports, --cluster-node-timeout 2000), two herald pods on it, one
subscriber on pod B, publishes every 10 ms to that subscriber's user on pod A.
After 2 s the master holding the cluster's hash tag is SIGKILLed; its replica
is promoted by the cluster. Reported per run: when the replica was promoted,
the failover gap (from the kill to the first event published after it that
reaches the subscriber), when both pods answered readiness "ready" again,
the worst readiness status seen meanwhile, and the events acknowledged,
delivered, delivered twice and lost.

    python3 perf/failover.py                  # 3 runs, target/release/herald
    RUNS=1 HERALD=/path/herald python3 perf/failover.py

Loopback only; every process is killed at the end of its run; every wait is
bounded. Standard library only.
"""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERALD = os.environ.get("HERALD", os.path.join(ROOT, "target/release/herald"))
RUNS = int(os.environ.get("RUNS", "3"))
PREFIX = "fo"


def free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def node_port():
    for _ in range(1000):
        p = random.randint(20000, 32767 - 10000)
        if free(p) and free(p + 10000):
            return p
    raise SystemExit("no free port pair for a cluster node")


def cli(port, *args, timeout=5):
    out = subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        capture_output=True, text=True, timeout=timeout,
    )
    return out.stdout


def serves(fields, slot):
    """Whether a `CLUSTER NODES` line (split) is a master serving `slot`."""
    if "master" not in fields[2] or "fail" in fields[2]:
        return False
    for r in fields[8:]:
        if r.startswith("["):
            continue
        lo, _, hi = r.partition("-")
        if int(lo) <= slot <= int(hi or lo):
            return True
    return False


def port_of(fields):
    return int(fields[1].split(":")[1].split("@")[0])


def now():
    return time.monotonic()


class Http:
    """A keep-alive HTTP/1.1 client for one host:port (enough for herald)."""

    def __init__(self, addr):
        self.addr = addr
        self.sock = None
        self.buf = b""

    def request(self, method, path, body=b""):
        for _ in range(2):
            try:
                if self.sock is None:
                    host, port = self.addr.rsplit(":", 1)
                    self.sock = socket.create_connection((host, int(port)), timeout=5)
                    self.buf = b""
                head = (
                    f"{method} {path} HTTP/1.1\r\nhost: {self.addr}\r\n"
                    f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
                ).encode()
                self.sock.sendall(head + body)
                return self._response()
            except OSError:
                self.sock = None
        return 0, b""

    def _response(self):
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("closed")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == "content-length":
                length = int(v.strip())
        while len(self.buf) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("closed")
            self.buf += chunk
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, body


def subscribe(addr, user, arrivals, stop):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=1)
    s.sendall(
        f"GET /api/user/sse/connect?userId={user} HTTP/1.1\r\nhost: {addr}\r\n"
        f"accept: text/event-stream\r\n\r\n".encode()
    )
    buf = b""
    while not stop.is_set():
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            return
        buf += chunk
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            for line in block.split(b"\n"):
                if line.startswith(b"data: g-"):
                    arrivals.append((now(), int(line[8:])))


def start_pod(url, name, log):
    p = subprocess.Popen(
        [HERALD, "--listen", "127.0.0.1:0", "--redis", url, "--redis-prefix", PREFIX,
         "--pod-id", name, "--shards", "1", "--redis-timeout", "500ms",
         "--heartbeat-interval", "1s", "--log", "warn"],
        stdout=subprocess.PIPE, stderr=log, text=True,
    )
    line = p.stdout.readline()
    if "listening on" not in line:
        raise SystemExit(f"pod {name} did not start: {line!r}")
    threading.Thread(target=lambda: p.stdout.read(), daemon=True).start()
    return p, line.split("://")[1].split()[0]


def one_run(run):
    tmp = tempfile.mkdtemp(prefix="herald-failover-")
    nodes = {}
    pods = []
    try:
        for i in range(6):
            port = node_port()
            d = os.path.join(tmp, f"n{port}")
            os.makedirs(d)
            nodes[port] = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-config-file", os.path.join(d, "nodes.conf"),
                 "--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no",
                 "--dir", d, "--logfile", os.path.join(d, "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        ports = list(nodes)
        deadline = now() + 10
        while not all(cli(p, "ping").strip() == "PONG" for p in ports):
            if now() > deadline:
                raise SystemExit("redis nodes did not start")
            time.sleep(0.05)
        subprocess.run(
            ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
             "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, timeout=60, check=True,
        )
        deadline = now() + 30
        while True:
            ok = all("cluster_state:ok" in cli(p, "cluster", "info") for p in ports)
            synced = all(
                "master_link_status:up" in cli(p, "info", "replication")
                for p in ports if "role:slave" in cli(p, "info", "replication")
            )
            if ok and synced:
                break
            if now() > deadline:
                raise SystemExit("the cluster did not converge")
            time.sleep(0.1)
        url = f"redis-cluster://127.0.0.1:{ports[0]}?" + "&".join(f"node=127.0.0.1:{p}" for p in ports[1:])
        log = open(os.path.join(tmp, "pods.log"), "w")
        a, a_addr = start_pod(url, "fo-a", log)
        b, b_addr = start_pod(url, "fo-b", log)
        pods = [a, b]
        ha, hb = Http(a_addr), Http(b_addr)
        stop = threading.Event()
        arrivals = []
        threading.Thread(target=subscribe, args=(b_addr, "gap", arrivals, stop), daemon=True).start()
        deadline = now() + 10
        while True:
            st, body = ha.request("GET", "/api/user/sse/stats")
            if st == 200 and (json.loads(body).get("cluster") or {}).get("connections") == 1:
                break
            if now() > deadline:
                raise SystemExit(f"the subscriber never registered: {body!r}")
            time.sleep(0.05)

        sent = []  # (index, time sent, status)

        def publish():
            i = 0
            while not stop.is_set() and i < 3000:
                t = now()
                st, _ = ha.request("POST", "/api/broadcast", json.dumps(
                    {"data": f"g-{i}", "target": {"users": ["gap"]}}).encode())
                sent.append((i, t, st))
                i += 1
                time.sleep(max(0.0, 0.01 - (now() - t)))

        ready = []  # (time, pod, status, state)

        def watch():
            hs = {"a": Http(a_addr), "b": Http(b_addr)}
            while not stop.is_set():
                for name, h in hs.items():
                    st, body = h.request("GET", "/health/ready")
                    try:
                        state = json.loads(body).get("status")
                    except ValueError:
                        state = None
                    ready.append((now(), name, st, state))
                time.sleep(0.05)

        threads = [threading.Thread(target=publish), threading.Thread(target=watch)]
        for t in threads:
            t.start()
        time.sleep(2)
        slot = int(cli(ports[0], "cluster", "keyslot", "{%s}:log" % PREFIX).strip())
        victim = next(
            port_of(f) for f in (l.split() for l in cli(ports[0], "cluster", "nodes").splitlines())
            if serves(f, slot)
        )
        killed_at = now()
        nodes[victim].send_signal(signal.SIGKILL)
        nodes[victim].wait()
        survivor = next(p for p in ports if p != victim)
        promoted = None
        deadline = now() + 30
        while promoted is None and now() < deadline:
            for f in (l.split() for l in cli(survivor, "cluster", "nodes").splitlines()):
                if serves(f, slot) and port_of(f) != victim:
                    promoted = now() - killed_at
            time.sleep(0.05)
        time.sleep(8)
        stop.set()
        for t in threads:
            t.join(timeout=10)
        time.sleep(3)

        after_kill = {i for i, t, st in sent if t >= killed_at}
        first = min((t for t, i in arrivals if i in after_kill), default=None)
        gap = None if first is None else first - killed_at
        back = None
        for name in ("a", "b"):
            last_bad = max((t for t, n, st, s in ready if n == name and t >= killed_at and s != "ready"), default=None)
            if last_bad is not None:
                back = max(back or 0, last_bad - killed_at)
        worst = sorted({(st, s) for t, n, st, s in ready if t >= killed_at})
        acked = {i for i, t, st in sent if st == 202}
        counts = {}
        for _, i in arrivals:
            counts[i] = counts.get(i, 0) + 1
        twice = sum(1 for c in counts.values() if c > 1)
        lost = len(acked - set(counts))
        fmt = lambda v: "-" if v is None else f"{v:.2f} s"
        print(f"run {run}\tpromoted after {fmt(promoted)}\tgap {fmt(gap)}\t"
              f"ready again after {fmt(back)}\treadiness seen {worst}\t"
              f"acked {len(acked)}\tdelivered {len(counts)}\ttwice {twice}\tlost {lost}", flush=True)
        return gap
    finally:
        for p in pods:
            p.kill()
            p.wait()
        for p in nodes.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing (apt-get install -y redis-server redis-tools)")
    if not os.access(HERALD, os.X_OK):
        raise SystemExit(f"no herald at {HERALD} (cargo build --release)")
    for run in range(1, RUNS + 1):
        one_run(run)


if __name__ == "__main__":
    sys.exit(main())
