#!/usr/bin/env python3
"""A fast webhook receiver for `loadtest/run events`: acknowledges every
POST with 200, checks each signature, and answers `GET /stats` with what
it saw. asyncio with a hand-rolled HTTP/1.1 parser (keep-alive, no
pipelining), so that on a shared two-core machine the receiver is not what
limits the dispatch rate being measured.

    python3 loadtest/webhook_receiver.py PORT SECRET
"""
import asyncio
import hashlib
import hmac
import json
import sys
import time

PORT, SECRET = int(sys.argv[1]), sys.argv[2].encode()
stats = {"received": 0, "distinct": 0, "bad_signatures": 0, "out_of_order": 0,
         "first_at": None, "last_at": None}
seen = set()
last_per_order = {}


def receive(headers, body):
    now = time.monotonic()
    stats["received"] += 1
    stats["first_at"] = stats["first_at"] or now
    stats["last_at"] = now
    good = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(good, headers.get("x-signature", "")):
        stats["bad_signatures"] += 1
        return
    event = json.loads(body)
    if event["id"] in seen:
        return
    seen.add(event["id"])
    stats["distinct"] += 1
    if last_per_order.get(event["order_id"], 0) > event["id"]:
        stats["out_of_order"] += 1
    last_per_order[event["order_id"]] = event["id"]


async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ")[:2]
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            answer = b""
            if method == "POST":
                receive(headers, body)
            elif path == "/stats":
                answer = json.dumps(stats).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(answer), answer))
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", PORT)
    async with server:
        await server.serve_forever()


asyncio.run(main())
