"""A real permessage-deflate client (Python `websockets`) for tests/it/wire.rs.

usage: deflate_client.py URL SUBSCRIBERS

Opens SUBSCRIBERS compressing connections plus one compressing publisher,
subscribes them all to "deflate", publishes one large and one small JSON
message, and prints one JSON object: the negotiated extension, and what every
subscriber received (compared with what was sent).
"""
import asyncio
import json
import sys

import websockets


async def request(ws, msg):
    await ws.send(json.dumps(msg))
    while True:
        reply = json.loads(await ws.recv())
        if reply.get("id") == msg.get("id"):
            return reply


async def main(url, count):
    big = {"text": "the quick brown fox jumps over the lazy dog " * 100}
    small = {"n": 1}
    conns = [await websockets.connect(url, compression="deflate", max_size=2**24) for _ in range(count + 1)]
    try:
        for ws in conns:
            welcome = json.loads(await ws.recv())
            assert welcome["type"] == "welcome", welcome
        subscribers, publisher = conns[:count], conns[count]
        for i, ws in enumerate(subscribers):
            ack = await request(ws, {"type": "subscribe", "topic": "deflate", "id": i + 1})
            assert ack["type"] == "ack", ack
        for payload in (big, small):
            await publisher.send(json.dumps({"type": "publish", "topic": "deflate", "payload": payload}))
        received = []
        for ws in subscribers:
            got = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(2)]
            received.append([m["payload"] == p for m, p in zip(got, (big, small))])
        extensions = [str(e.name) for e in conns[0].protocol.extensions]
        print(json.dumps({"extensions": extensions, "received": received, "big_bytes": len(json.dumps(big))}))
    finally:
        for ws in conns:
            await ws.close()


asyncio.run(main(sys.argv[1], int(sys.argv[2])))
