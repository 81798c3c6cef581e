#!/usr/bin/env python3
"""Idle memory per stream over TLS: HTTP/1.1 or HTTP/2 with K streams per connection.

Opens N idle SSE streams to an HTTPS server on loopback, waits until each has its
response head (and its first body bytes, when the server sends some at once),
holds them, and reports the server's RSS growth per stream. Bounded: every step
has a deadline and the run ends by itself after --hold.

    tls_idle.py --url 'https://127.0.0.1:8443/api/user/sse/connect?userId=u{i}' \
        --streams 2000 --per-conn 0 --server-pid PID --hold 3
    --per-conn 0: HTTP/1.1 (one stream per TLS connection, ALPN http/1.1)
    --per-conn K: HTTP/2 with K streams on each connection (ALPN h2)

Prints one JSON object: streams, connections, rss_before, rss_open (once every
stream is open), rss_after (after --hold), bytes_per_stream_open and
bytes_per_stream (after the hold: the steady state, once the server has had time
to give back what the connect burst freed). Certificates are not verified (loopback load test).
Needs the `h2` package for HTTP/2 (perf/requirements.txt).
"""

import argparse
import asyncio
import json
import ssl
import sys
import time
from urllib.parse import urlsplit


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def context(alpn: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([alpn])
    return ctx


async def h1_stream(host, port, path, ready, stop, deadline, opening):
    # At most --open-concurrency connections between connect and response head:
    # one Python thread cannot keep thousands of handshakes moving at once, and a
    # server would rightly time out the heads that wait behind them.
    async with opening:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context("http/1.1"), server_hostname="localhost"),
            deadline - time.monotonic(),
        )
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), deadline - time.monotonic())
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head[:80])
    ready()
    while not stop.is_set():
        try:
            data = await asyncio.wait_for(reader.read(65536), 0.5)
        except asyncio.TimeoutError:
            continue
        if not data:
            break
    writer.close()


async def h2_conn(host, port, paths, ready, stop, deadline, opening):
    import h2.config
    import h2.connection
    import h2.events

    await opening.acquire()
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=context("h2"), server_hostname="localhost"),
        deadline - time.monotonic(),
    )
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    for path in paths:
        sid = conn.get_next_available_stream_id()
        conn.send_headers(
            sid,
            [
                (":method", "GET"),
                (":path", path),
                (":scheme", "https"),
                (":authority", "localhost"),
                ("accept", "text/event-stream"),
            ],
            end_stream=True,
        )
    writer.write(conn.data_to_send())
    pending = len(paths)
    while not stop.is_set():
        try:
            data = await asyncio.wait_for(reader.read(65536), 0.5)
        except asyncio.TimeoutError:
            if pending and time.monotonic() > deadline:
                raise RuntimeError("h2 streams not answered in time")
            continue
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                status = dict(ev.headers).get(b":status")
                if status != b"200":
                    raise RuntimeError(f"status {status}")
                pending -= 1
                ready()
                if pending == 0:
                    opening.release()
            elif isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        out = conn.data_to_send()
        if out:
            writer.write(out)
    writer.close()


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--streams", type=int, default=2000)
    ap.add_argument("--per-conn", type=int, default=0)
    ap.add_argument("--server-pid", type=int, required=True)
    ap.add_argument("--hold", type=float, default=3.0)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--open-concurrency", type=int, default=256,
                    help="connections being opened at once (connect to response head)")
    a = ap.parse_args()
    u = urlsplit(a.url)
    path_tpl = u.path + ("?" + u.query if u.query else "")
    before = rss(a.server_pid)
    deadline = time.monotonic() + a.timeout
    stop = asyncio.Event()
    opened = 0

    def ready():
        nonlocal opened
        opened += 1

    opening = asyncio.Semaphore(a.open_concurrency)
    tasks = []
    if a.per_conn == 0:
        for i in range(a.streams):
            tasks.append(asyncio.create_task(
                h1_stream(u.hostname, u.port, path_tpl.replace("{i}", str(i)), ready, stop, deadline,
                          opening)))
        conns = a.streams
    else:
        conns = (a.streams + a.per_conn - 1) // a.per_conn
        for c in range(conns):
            paths = [path_tpl.replace("{i}", str(c * a.per_conn + k))
                     for k in range(min(a.per_conn, a.streams - c * a.per_conn))]
            tasks.append(asyncio.create_task(
                h2_conn(u.hostname, u.port, paths, ready, stop, deadline, opening)))
    async def give_up(why: str) -> int:
        print(why, file=sys.stderr)
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return 1

    while opened < a.streams:
        if time.monotonic() > deadline:
            return await give_up(f"only {opened} of {a.streams} streams opened")
        failed = next((t for t in tasks if t.done() and not t.cancelled() and t.exception()), None)
        if failed is not None:
            return await give_up(f"a connection failed: {failed.exception()!r}")
        await asyncio.sleep(0.05)
    at_open = rss(a.server_pid)
    await asyncio.sleep(a.hold)
    after = rss(a.server_pid)
    stop.set()
    await asyncio.wait(tasks, timeout=5)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({
        "streams": a.streams,
        "connections": conns,
        "per_conn": a.per_conn,
        "rss_before": before,
        "rss_open": at_open,
        "rss_after": after,
        "bytes_per_stream_open": round((at_open - before) / a.streams),
        "bytes_per_stream": round((after - before) / a.streams),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
