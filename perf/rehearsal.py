#!/usr/bin/env python3
"""perf/rehearsal.py: the sampler and the summary of perf/rehearsal.sh.

    rehearsal.py sample OUT MARK          one sample of everything at a phase edge:
                                          OUT/raw/MARK.json
    rehearsal.py converge OUT MARK SECS   polls (1/s, at most SECS) until the cluster's
                                          registry and presence match what the clients
                                          hold; OUT/raw/MARK.json with the time it took
    rehearsal.py summary OUT              OUT/summary.md and OUT/phases.json

Reads OUT/state.json (pods: k, port, pid; redis: ports; topics), written by the
shell script whenever a process changes, the clients' snapshots (OUT/sub-*.jsonl),
the publisher's (OUT/pub.jsonl), the phase marks (OUT/phases.tsv: name, start ms,
end ms) and the clients' final reports (OUT/sub-*.json). Standard library only;
loopback only (every address comes from state.json, all 127.0.0.1).
"""
import glob
import json
import os
import subprocess
import sys
import time
import urllib.request

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def load(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def http(method, url, body=None, timeout=5):
    assert url.startswith("http://127.0.0.1:"), url
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except Exception as e:  # noqa: BLE001 (any failure is a figure: the pod is gone)
        return {"error": str(e)}


def proc(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read().rsplit(")", 1)[1].split()
        cpu = (int(st[11]) + int(st[12])) / TICK
        rss = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
        return {"cpu_s": cpu, "rss": rss}
    except OSError:
        return None


def redis_info(port):
    try:
        text = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), "INFO", "all"],
                              capture_output=True, text=True, timeout=5).stdout
    except subprocess.SubprocessError:
        return None
    if not text.strip():
        return None
    calls, cmds, info = 0, {}, {}
    for line in text.splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line[8:].split(":", 1)
            n = int(rest.split("calls=")[1].split(",")[0])
            if name != "info":
                calls += n
                cmds[name] = n
        elif ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            info[k] = v.strip()
    return {"role": info.get("role"), "calls": calls, "cmds": cmds,
            "cpu_s": float(info.get("used_cpu_sys", 0)) + float(info.get("used_cpu_user", 0)),
            "used_memory": int(info.get("used_memory", 0))}


def kernel():
    out = {}
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                p = line.split()
                out["tcp_mem"] = int(p[p.index("mem") + 1]) * PAGE
                out["tcp_inuse"] = int(p[p.index("inuse") + 1])
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Slab:"):
                out["slab"] = int(line.split()[1]) * 1024
    return out


def last_lines(out, pattern):
    rows = []
    for path in sorted(glob.glob(os.path.join(out, pattern))):
        whole = read_jsonl(path)
        if whole:
            rows.append(whole[-1])
    return rows


def truth(out):
    """What the clients hold now (their latest snapshots)."""
    rows = last_lines(out, "sub-*.jsonl")
    return {"open": sum(r["counters"]["open"] for r in rows),
            "users_online": sum(r["counters"]["users_online"] for r in rows),
            "parts": len(rows)}


def live_pod(state):
    for p in state["pods"]:
        if p.get("pid") and proc(p["pid"]) is not None:
            return p
    return None


def cluster_view(state):
    p = live_pod(state)
    if p is None:
        return {"error": "no live pod"}
    base = f"http://127.0.0.1:{p['port']}"
    st = http("GET", base + "/api/user/sse/stats")
    topics = [f"t{t}" for t in range(min(state["topics"], 1000))]
    pres = http("POST", base + "/api/presence", json.dumps({"topics": topics}).encode())
    c = st.get("cluster") or {}
    return {"pod": p["k"], "connections": c.get("connections"), "users": c.get("users"),
            "pods": c.get("pods"), "inactive": c.get("inactive"),
            "presence_topic_streams": sum((pres.get("topics") or {}).values())
            if "topics" in pres else None, "errors": [x.get("error") for x in (st, pres) if "error" in x]}


def sample(out, mark):
    state = load(os.path.join(out, "state.json"))
    pods = []
    for p in state["pods"]:
        s = {"k": p["k"], "port": p["port"], "pid": p.get("pid")}
        pr = proc(p["pid"]) if p.get("pid") else None
        s["alive"] = pr is not None
        if pr:
            s.update(pr)
            st = http("GET", f"http://127.0.0.1:{p['port']}/api/user/sse/stats")
            s["connections"] = st.get("connections")
        pods.append(s)
    redis = [dict(port=port, **(redis_info(port) or {"down": True})) for port in state["redis"]]
    res = {"mark": mark, "t_ms": int(time.time() * 1000), "pods": pods, "redis": redis,
           "kernel": kernel(), "truth": truth(out), "cluster": cluster_view(state)}
    os.makedirs(os.path.join(out, "raw"), exist_ok=True)
    with open(os.path.join(out, "raw", mark + ".json"), "w") as f:
        json.dump(res, f, indent=1)


def converge(out, mark, t0_ms, secs):
    """Seconds from the fault (t0_ms) until the registry (connections, users) and
    presence (streams over all topics) equal what the clients hold, with every
    stream open again (polled once a second from 2 s after the fault, when the
    clients' snapshots show it, for at most `secs` after the fault)."""
    cfg = load(os.path.join(out, "config.json"), {})
    t0 = t0_ms / 1000
    time.sleep(max(0.0, t0 + 2 - time.time()))
    last, ok = None, False
    while True:
        state = load(os.path.join(out, "state.json"))
        tr = truth(out)
        cv = cluster_view(state)
        last = {"truth": tr, "cluster": cv}
        if (tr["open"] == cfg.get("streams") and cv.get("connections") == tr["open"]
                and cv.get("users") == tr["users_online"]
                and cv.get("presence_topic_streams") == tr["open"]):
            ok = True
            break
        if time.time() - t0 >= secs:
            break
        time.sleep(1)
    took = time.time() - t0
    res = {"mark": mark, "seconds": round(took, 1) if ok else None, "bound_s": secs, "last": last}
    os.makedirs(os.path.join(out, "raw"), exist_ok=True)
    with open(os.path.join(out, "raw", mark + ".json"), "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps({"mark": mark, "seconds": res["seconds"]}))


# ─────────────────────────────── summary ───────────────────────────────

KINDS = ["user", "topic", "broadcast"]


def read_jsonl(path):
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    return rows


def merged_series(out):
    """Per second (t_ms // 1000): the sum over the client processes of their
    latest snapshot at or before that second."""
    parts = [read_jsonl(p) for p in sorted(glob.glob(os.path.join(out, "sub-*.jsonl")))]
    return parts


def at(rows, t_ms):
    """The last row at or before t_ms (or the first)."""
    best = None
    for r in rows:
        if r["t_ms"] <= t_ms:
            best = r
        else:
            break
    return best or (rows[0] if rows else None)


def counters_at(parts, t_ms):
    tot, pod_open = {}, None
    for rows in parts:
        r = at(rows, t_ms)
        if r is None:
            continue
        for k, v in r["counters"].items():
            if isinstance(v, list):
                tot[k] = [a + b for a, b in zip(tot.get(k, [0] * len(v)), v)]
            else:
                tot[k] = tot.get(k, 0) + v
        po = r["pod_open"]
        pod_open = po if pod_open is None else [a + b for a, b in zip(pod_open, po)]
        si = r.get("silent", [0] * len(po))
        tot["silent_by_pod"] = [a + b for a, b in zip(tot.get("silent_by_pod", [0] * len(si)), si)]
    return tot, pod_open or []


def lat_between(parts, kind, t0, t1):
    """Merged latency buckets of the intervals ending in (t0, t1]."""
    b = {}
    for rows in parts:
        for r in rows:
            if t0 < r["t_ms"] <= t1:
                for k, n in r["latency"][kind].get("log_buckets", {}).items():
                    b[int(k)] = b.get(int(k), 0) + n
    total = sum(b.values())
    if not total:
        return None

    def q(x):
        acc = 0
        for k in sorted(b):
            acc += b[k]
            if acc >= x * total:
                return 2 ** ((k + 0.5) / 8)
        return None
    return {"n": total, "p50_ms": q(0.5) / 1000, "p99_ms": q(0.99) / 1000, "max_ms": 2 ** ((max(b) + 1) / 8) / 1000}


def back_time(parts, t0, t1, target):
    """Seconds from t0 until the clients held `target` streams again (within t1)."""
    ts = sorted({r["t_ms"] for rows in parts for r in rows if t0 <= r["t_ms"] <= t1})
    dipped = False
    for t in ts:
        c, _ = counters_at(parts, t)
        if c.get("open", 0) < target:
            dipped = True
        elif dipped:
            return (t - t0) / 1000
    return 0.0 if not dipped else None


def peak_rate(parts, key, t0, t1):
    ts = sorted({r["t_ms"] // 1000 * 1000 for rows in parts for r in rows if t0 <= r["t_ms"] <= t1})
    best, prev = 0, None
    for t in ts:
        c, _ = counters_at(parts, t + 999)
        if prev is not None:
            best = max(best, c.get(key, 0) - prev)
        prev = c.get(key, 0)
    return best


def pub_next_at(pub, t_ms):
    r = at(pub, t_ms)
    return {k: r["kinds"][k]["next"] for k in KINDS} if r else {k: 0 for k in KINDS}


def fmt(v, nd=1):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def summary(out):
    cfg = load(os.path.join(out, "config.json"), {})
    phases = []
    with open(os.path.join(out, "phases.tsv")) as f:
        for line in f:
            p = line.split()
            if len(p) >= 3 and p[2] != "-":
                phases.append((p[0], int(p[1]), int(p[2])))
    parts = merged_series(out)
    pub = read_jsonl(os.path.join(out, "pub.jsonl")) if os.path.exists(os.path.join(out, "pub.jsonl")) else []
    finals = [load(p) for p in sorted(glob.glob(os.path.join(out, "sub-*.json")))]
    finals = [f for f in finals if f]
    streams = cfg.get("streams", 0)
    hb = cfg.get("hb", 0)
    lost_seqs = {k: sorted(s for f in finals for s in f["kinds"][k]["lost_seqs"]) for k in KINDS}
    rows = []
    # The presence stream's transitions (event, at ms), bucketed by phase below.
    presence = []
    try:
        with open(os.path.join(out, "presence-stream.txt")) as f:
            ev = None
            for line in f:
                if line.startswith("event: "):
                    ev = line[7:].strip()
                elif line.startswith("data: ") and ev in ("online", "offline"):
                    try:
                        presence.append((ev, json.loads(line[6:])["at"]))
                    except (ValueError, KeyError):
                        pass
                elif not line.strip():
                    ev = None
    except OSError:
        pass
    for name, t0, t1 in phases:
        c0, _ = counters_at(parts, t0)
        c1, pod_open = counters_at(parts, t1)
        d = lambda k: c1.get(k, 0) - c0.get(k, 0)  # noqa: E731
        dl = lambda k, i: c1.get(k, [0, 0, 0])[i] - c0.get(k, [0, 0, 0])[i]  # noqa: E731
        secs = max((t1 - t0) / 1000, 0.001)
        n0, n1 = pub_next_at(pub, t0), pub_next_at(pub, t1)
        s0 = load(os.path.join(out, "raw", f"{name}-start.json"))
        s1 = load(os.path.join(out, "raw", f"{name}-end.json"))
        conv = load(os.path.join(out, "raw", f"{name}-converge.json"))
        row = {"phase": name, "seconds": round(secs, 1), "open_end": c1.get("open"),
               "silent_by_pod_end": c1.get("silent_by_pod"),
               "users_online_end": c1.get("users_online"), "pod_open_end": pod_open,
               "connects": d("connects"), "connects_per_s": d("connects") / secs,
               "peak_opened_per_s": peak_rate(parts, "opened", t0, t1),
               "refused_503": d("refused_503"), "refused_429": d("refused_429"),
               "refused_other": d("refused_other"), "connect_errors": d("connect_errors"),
               "timeouts": d("timeouts"), "ended": d("ended"), "gave_up": d("gave_up"),
               "resyncs": d("resyncs"),
               "back_s": back_time(parts, t0, t1, streams) if name != "ramp" else None,
               "published": {k: n1[k] - n0[k] for k in KINDS}}
        row["presence_online"] = sum(1 for e, at in presence if e == "online" and t0 <= at < t1)
        row["presence_offline"] = sum(1 for e, at in presence if e == "offline" and t0 <= at < t1)
        for i, k in enumerate(KINDS):
            row[f"{k}_delivered"] = dl("fresh", i)
            row[f"{k}_dup"] = dl("dup", i)
            row[f"{k}_lost_listed"] = sum(1 for s in lost_seqs[k] if n0[k] <= s < n1[k])
            row[f"{k}_latency"] = lat_between(parts, k, t0, t1)
        if s0 and s1:
            dt = (s1["t_ms"] - s0["t_ms"]) / 1000 or 1
            masters = []
            for a, b in zip(s0["redis"], s1["redis"]):
                if "calls" in a and "calls" in b:
                    masters.append({"port": a["port"], "role": b.get("role"),
                                    "cmds_per_s": (b["calls"] - a["calls"]) / dt,
                                    "cpu_pct": 100 * (b["cpu_s"] - a["cpu_s"]) / dt})
                else:
                    masters.append({"port": a["port"], "role": "down"})
            row["redis"] = masters
            row["redis_cmds_per_s_total"] = sum(m.get("cmds_per_s", 0) for m in masters)
            # Replicas replay the masters' writes (and count them): the model is of masters.
            row["redis_cmds_per_s_masters"] = sum(m.get("cmds_per_s", 0) for m in masters
                                                  if m.get("role") == "master")
            # Per command on the masters (what the model is checked against).
            per = {}
            for a, b, m in zip(s0["redis"], s1["redis"], masters):
                if m.get("role") == "master" and "cmds" in a and "cmds" in b:
                    for c, v in b["cmds"].items():
                        per[c] = per.get(c, 0) + (v - a["cmds"].get(c, 0)) / dt
            row["redis_masters_by_command"] = dict(sorted(per.items(), key=lambda kv: -kv[1]))
            pods = []
            for a in s1["pods"]:
                b = next((x for x in s0["pods"] if x["pid"] == a["pid"]), None)
                if a.get("alive") and b and b.get("alive"):
                    conns = a.get("connections") or 0
                    pods.append({"k": a["k"], "cpu_pct": 100 * (a["cpu_s"] - b["cpu_s"]) / dt,
                                 "rss_mb": a["rss"] / 1e6, "connections": conns,
                                 "rss_per_stream_kb": a["rss"] / conns / 1e3 if conns else None})
                else:
                    pods.append({"k": a["k"], "alive": a.get("alive")})
            row["pods"] = pods
            row["registry_end"] = s1["cluster"]
            row["truth_end"] = s1["truth"]
            row["kernel_end"] = s1["kernel"]
        if conv:
            row["converge_s"] = conv.get("seconds")
        rows.append(row)
    # Memory per stream against the idle baseline (before any stream), the pods'
    # own; the same without the presence stream's pod (its history of presence
    # events is presence's, not the streams'); the pods that ran the whole time at
    # the end of steady and at the end (flat after the storm?); the embedded
    # herald's with the same layout (raw/embedded.json).
    base = load(os.path.join(out, "raw", "baseline.json"))
    mem = None
    steady_end = load(os.path.join(out, "raw", "steady-end.json"))
    # After the last fault's window, streams still open (the "end" mark comes after
    # the clients closed them).
    end = load(os.path.join(out, "raw", rows[-1]["phase"] + "-end.json")) if rows else None
    emb = load(os.path.join(out, "raw", "embedded.json"))

    def per_stream(snap, keep):
        rss0 = {p["k"]: p.get("rss", 0) for p in base["pods"]}
        ps = [p for p in snap["pods"] if p.get("alive") and keep(p)]
        grow = sum(p.get("rss", 0) - rss0.get(p["k"], 0) for p in ps)
        n = sum(p.get("connections") or 0 for p in ps)
        return grow / n / 1e3 if n else None

    if base and steady_end:
        n = steady_end["truth"]["open"] or 1
        mem = {"streams": n,
               "herald_rss_per_stream_kb": per_stream(steady_end, lambda p: True),
               "herald_rss_per_stream_kb_without_presence_pod": per_stream(steady_end, lambda p: p["k"] != 2),
               "kernel_tcp_mem_per_socket_b": (steady_end["kernel"]["tcp_mem"] - base["kernel"]["tcp_mem"]) / (2 * n),
               "kernel_slab_per_socket_b": (steady_end["kernel"]["slab"] - base["kernel"]["slab"]) / (2 * n)}
        if end:
            # Pods with the same process at both marks (not killed, drained or restarted).
            same = {p["k"] for p in steady_end["pods"]
                    if any(q["k"] == p["k"] and q.get("pid") == p.get("pid") for q in end["pods"])}
            mem["survivors"] = sorted(same)
            mem["survivors_per_stream_kb_steady"] = per_stream(steady_end, lambda p: p["k"] in same and p["k"] != 2)
            mem["survivors_per_stream_kb_end"] = per_stream(end, lambda p: p["k"] in same and p["k"] != 2)
        if emb and emb.get("open"):
            mem["embedded_per_stream_kb"] = (emb["rss1_kb"] - emb["rss0_kb"]) / emb["open"] * 1.024
            mem["embedded_streams"] = emb["open"]
    tot = {k: {"expected": sum(f["kinds"][k]["expected"] for f in finals),
               "received": sum(f["kinds"][k]["received"] for f in finals),
               "lost": sum((f["kinds"][k]["lost"] or 0) for f in finals),
               "lost_resynced": sum(f["kinds"][k].get("lost_resynced", 0) for f in finals),
               "duplicates": sum(f["kinds"][k]["duplicates"] for f in finals),
               "streams_with_loss": sum(f["kinds"][k]["streams_with_loss"] for f in finals),
               "loss_by_pod": [sum(x) for x in zip(*[f["kinds"][k].get("loss_by_pod") or [0] * cfg.get("pods", 1)
                                                    for f in finals])] if finals else []}
           for k in KINDS}
    accounted = bool(finals) and all(f.get("accounted") for f in finals)
    model = None
    if cfg:
        p = cfg["pods"]
        # Streams per online user at the start (each user's streams were placed on
        # distinct pods, i % pods): the pods a user event goes to.
        st0 = load(os.path.join(out, "raw", "steady-start.json")) or {}
        tr = st0.get("truth") or {}
        d = min(p, tr["open"] / tr["users_online"]) if tr.get("users_online") else 1.0
        # perf/SCALE.md's rows as the rehearsal corrected them ("Rehearsal at
        # 100,000 streams"): a keyed publish of one event costs EVALSHA, GET + SET
        # of its idempotency key, ZADD of the pod's applied record and the log's
        # XADD (5); a user event adds HVALS (its pods), GET (the last broadcast id)
        # and one inbox XADD per pod holding the user, a topic event SMEMBERS, GET
        # and one XADD per interested pod (every pod here), an `all` event the
        # broadcast stream's XADD and SET of its last id. Each pod reached wakes at
        # most one XREAD (reads coalesce under load), and a user event whose user
        # one pod alone holds is deleted by it (XDEL): a third of the users here
        # have one stream.
        sole = 1.0 / 3.0
        per = {"user": 5 + 2 + d + d + sole,
               "topic": 5 + 2 + p + p,
               "broadcast": 5 + 2 + p}
        model = {"user": per["user"] * cfg["user_rate"],
                 "topic": per["topic"] * cfg["topic_rate"],
                 "broadcast": per["broadcast"] * cfg["bcast_rate"],
                 "per_event": per, "pods_per_user_event": d}
        idle = next((r for r in rows if r["phase"] == "idle"), None)
        model["idle_measured"] = idle.get("redis_cmds_per_s_masters") if idle else None
        model["total"] = model["user"] + model["topic"] + model["broadcast"] + (model["idle_measured"] or 0)
    res = {"config": cfg, "phases": rows, "totals": tot, "accounted": accounted,
           "memory": mem, "model_cmds_per_s_steady": model}
    with open(os.path.join(out, "phases.json"), "w") as f:
        json.dump(res, f, indent=1)
    L = []
    L.append(f"# Rehearsal: {streams} streams, {cfg.get('pods')} pods, Redis Cluster 3+3\n")
    L.append("Config: " + ", ".join(f"{k}={v}" for k, v in cfg.items()) + "\n")
    L.append("## Phases\n")
    L.append("| phase | s | open at end | connects/s (peak opened/s) | 503 | 429 | conn err | timeouts | back in s | "
             "user dup | user lost (listed) | topic / bcast lost (listed) | user p50/p99 ms | topic p50/p99 ms | bcast p50/p99 ms | resyncs | registry = truth in s | presence online / offline |")
    L.append("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|---:|---:|---|")
    for r in rows:
        def lt(k):
            v = r.get(f"{k}_latency")
            return f"{v['p50_ms']:.1f} / {v['p99_ms']:.1f}" if v else "–"
        L.append(f"| {r['phase']} | {r['seconds']} | {r['open_end']} | {r['connects_per_s']:.0f} ({r['peak_opened_per_s']}) | "
                 f"{r['refused_503']} | {r['refused_429']} | {r['connect_errors']} | {r['timeouts']} | {fmt(r['back_s'])} | "
                 f"{r['user_dup']} | {r['user_lost_listed']} | {r['topic_lost_listed']} / {r['broadcast_lost_listed']} | {lt('user')} | {lt('topic')} | {lt('broadcast')} | "
                 f"{r['resyncs']} | {fmt(r.get('converge_s'))} | {r['presence_online']} / {r['presence_offline']} |")
    L.append("\n## Streams per pod at the end of each phase (clients' view)\n")
    for r in rows:
        L.append(f"- {r['phase']}: {r['pod_open_end']}; open but silent for 3 heartbeat intervals: "
                 f"{r['silent_by_pod_end']}")
    L.append("\n## Redis per node (commands/s, CPU %) and pods (CPU %, RSS per stream)\n")
    for r in rows:
        if "redis" not in r:
            continue
        red = ", ".join(f"{m['port']} {m.get('role')}: {m.get('cmds_per_s', 0):.0f}/s {m.get('cpu_pct', 0):.1f}%"
                        if "cmds_per_s" in m else f"{m['port']} down" for m in r["redis"])
        pods = ", ".join(f"pod{p['k']} {p['cpu_pct']:.1f}% {fmt(p.get('rss_per_stream_kb'))} KB/stream"
                         if "cpu_pct" in p else f"pod{p['k']} –" for p in r["pods"])
        reg = r["registry_end"]
        tr = r["truth_end"]
        L.append(f"- **{r['phase']}** Redis {r['redis_cmds_per_s_masters']:.0f} commands/s on the masters "
                 f"({r['redis_cmds_per_s_total']:.0f} with the replicas) — {red}")
        L.append(f"  - pods: {pods}")
        L.append(f"  - registry at the end: connections {reg.get('connections')} / users {reg.get('users')} / "
                 f"presence topic streams {reg.get('presence_topic_streams')}; truth: open {tr['open']} / "
                 f"users online {tr['users_online']}")
    if model:
        steady = next((r for r in rows if r["phase"] == "steady"), None)
        meas = steady.get("redis_cmds_per_s_masters") if steady else None
        L.append("\n## Steady phase against perf/SCALE.md's model\n")
        if steady and steady.get("redis_masters_by_command"):
            L.append("- masters, commands/s by command: " + ", ".join(
                f"{c} {v:.1f}" for c, v in steady["redis_masters_by_command"].items() if v >= 0.5))
        pe = model["per_event"]
        L.append(f"- model: {model['total']:.0f} commands/s = events (user {model['user']:.0f} at {pe['user']:.1f} "
                 f"per event with {model['pods_per_user_event']:.2f} pods per user, topic {model['topic']:.0f} at "
                 f"{pe['topic']:.0f}, broadcast {model['broadcast']:.0f} at {pe['broadcast']:.0f}) + the idle phase's "
                 f"{fmt(model['idle_measured'], 0)}; measured on the masters: {fmt(meas, 0)}"
                 + (f" ({100 * (meas / model['total'] - 1):+.0f}%)" if meas and model['total'] else ""))
        if model["idle_measured"] is not None and meas:
            ev = meas - model["idle_measured"]
            pred = model["user"] + model["topic"] + model["broadcast"]
            L.append(f"- events alone (steady − idle): measured {ev:.0f}/s, model {pred:.0f}/s ({100 * (ev / pred - 1):+.0f}%)")
    if mem:
        L.append("\n## Memory per stream (end of steady)\n")
        L.append(f"- herald RSS growth over the pods: {fmt(mem['herald_rss_per_stream_kb'], 2)} KB per stream "
                 f"({fmt(mem['herald_rss_per_stream_kb_without_presence_pod'], 2)} KB without pod 2, which holds "
                 f"the presence stream and its history); kernel TCP buffers {mem['kernel_tcp_mem_per_socket_b']:.0f} B "
                 f"and slab {mem['kernel_slab_per_socket_b']:.0f} B per socket (system-wide, both ends on loopback)")
        if "embedded_per_stream_kb" in mem:
            c = mem["herald_rss_per_stream_kb_without_presence_pod"]
            e = mem["embedded_per_stream_kb"]
            L.append(f"- embedded herald, same layout, {mem['embedded_streams']} streams: {e:.2f} KB per stream; "
                     f"cluster / embedded = {fmt(c / e if c and e else None, 2)}")
        if "survivors_per_stream_kb_end" in mem:
            L.append(f"- pods that ran the whole run ({mem['survivors']}, pod 2 left out): "
                     f"{fmt(mem['survivors_per_stream_kb_steady'], 2)} KB per stream at the end of steady, "
                     f"{fmt(mem['survivors_per_stream_kb_end'], 2)} KB after every fault")
    L.append("\n## Events over the whole run (exact)\n")
    if not accounted:
        L.append("- **not accounted**: the publisher's final never reached every client (see logs)")
    for k in KINDS:
        t = tot[k]
        L.append(f"- {k}: expected {t['expected']}, received {t['received']}, lost {t['lost']} "
                 f"(of which {t['lost_resynced']} on streams told RESYNC) "
                 f"({t['streams_with_loss']} streams; by pod at the end {t['loss_by_pod']}), "
                 f"duplicates {t['duplicates']}")
    # Redis's longest commands (SLOWLOG, 20 ms or more; the fault's DEBUG SLEEP
    # left out): a script that holds a node past cluster-node-timeout gets it
    # marked failing.
    slow = []
    for path in sorted(glob.glob(os.path.join(out, "logs", "slowlog-*.json"))):
        try:
            entries = json.load(open(path))
        except ValueError:
            continue
        def what(args):  # the command and its key
            return " ".join(str(x) for x in args[:1] + (args[3:4] if args[:1] == ["EVALSHA"] else args[1:2]))
        mine = sorted(((e[2], what(e[3])) for e in entries if e[3][:1] != ["DEBUG"]), reverse=True)
        if mine:
            slow.append(f"{os.path.basename(path)[8:-5]}: {len(mine)} over 20 ms, longest "
                        + ", ".join(f"{us / 1000:.0f} ms {what}" for us, what in mine[:3]))
    if glob.glob(os.path.join(out, "logs", "slowlog-*.json")):
        L.append("\n## Redis's slow log\n")
        L.extend(f"- {x}" for x in slow or ["no command of 20 ms or more (DEBUG SLEEP left out)"])
    notes = os.path.join(out, "notes.txt")
    if os.path.exists(notes):
        L.append("\n## Notes\n")
        with open(notes) as f:
            L.extend(line.rstrip() for line in f)
    text = "\n".join(L) + "\n"
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    cmd, out = sys.argv[1], sys.argv[2]
    if cmd == "sample":
        sample(out, sys.argv[3])
    elif cmd == "converge":
        converge(out, sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
    elif cmd == "summary":
        summary(out)
    else:
        sys.exit(f"unknown command {cmd}")
