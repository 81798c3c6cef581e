"""Reads one herald stream with httpx-sse and prints every event it yields.

Usage: httpx_sse_client.py URL

One JSON object per line on stdout: {"event", "data", "id", "retry"} for each
event httpx-sse yields (flushed at once, so the test reads them as they come),
then {"end": true} when the server ends the stream. Run by tests/clients.rs.
"""

import json
import sys

import httpx
from httpx_sse import connect_sse


def main() -> int:
    url = sys.argv[1]
    with httpx.Client(timeout=httpx.Timeout(30.0)) as client:
        with connect_sse(client, "GET", url) as source:
            if source.response.status_code != 200:
                print(json.dumps({"status": source.response.status_code}), flush=True)
                return 1
            for sse in source.iter_sse():
                print(
                    json.dumps(
                        {
                            "event": sse.event,
                            "data": sse.data,
                            "id": sse.id,
                            "retry": sse.retry,
                        }
                    ),
                    flush=True,
                )
    print(json.dumps({"end": True}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
