#!/usr/bin/env python3
"""Writes the committed seed corpora, fuzz/seeds/<target>/, from the shapes
the test suite sends (tests/it/, docs/protocol.md, tuning/*.toml).

    python3 fuzz/seeds.py [FLATC]     # FLATC: flatc 25.12.19 (for the FlatBuffers seeds)

Deterministic: running it again rewrites the same files.
"""
import base64, hashlib, hmac, json, os, shutil, struct, subprocess, sys, tempfile, zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "seeds")
FLATC = sys.argv[1] if len(sys.argv) > 1 else "flatc"


def write(target, name, data):
    os.makedirs(os.path.join(OUT, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(OUT, target, name), "wb") as f:
        f.write(data)


def client_frame(opcode, payload, fin=True, rsv1=False, mask=b"\x07\x01\x02\x03"):
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    n = len(payload)
    if n <= 125:
        head += bytes([0x80 | n])
    elif n <= 0xFFFF:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def deflate(message):
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = c.compress(message) + c.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4] if out.endswith(b"\x00\x00\xff\xff") else out


def upgrade(path="/ws", extra=""):
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n")


def handshake():
    write("handshake", "plain", upgrade())
    write("handshake", "echo-deflate", upgrade("/echo", "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits; server_max_window_bits=10\r\n"))
    write("handshake", "token-flatbuffers", upgrade("/ws?token=abc.def.ghi", "Sec-WebSocket-Protocol: shardcast.flatbuffers.v1, shardcast.json.v1\r\nOrigin: https://app.example\r\n"))
    write("handshake", "bearer", upgrade("/ws", "Authorization: Bearer abc.def.ghi\r\n"))
    write("handshake", "metrics", "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    write("handshake", "post", "POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    write("handshake", "version-8", upgrade().replace("Version: 13", "Version: 8"))


def frames():
    # knobs byte (limits), read-size byte, then the wire.
    fragmented = client_frame(1, b"frag", fin=False) + client_frame(9, b"mid") + client_frame(0, "mé".encode(), fin=False) + client_frame(0, b"nt")
    write("frames", "fragments-around-ping", b"\x04\x07" + fragmented)
    write("frames", "every-length-class", b"\x05\x40" + client_frame(1, b"z" * 125) + client_frame(2, b"z" * 126) + client_frame(2, b"y" * 300))
    write("frames", "close-1000", b"\x04\x01" + client_frame(8, struct.pack(">H", 1000) + b"bye"))
    write("frames", "bad-close", b"\x04\xff" + client_frame(8, b"\x03"))
    write("frames", "pong-binary", b"\x04\x10" + client_frame(10, b"") + client_frame(2, bytes(range(256))))
    msg = json.dumps({"type": "publish", "topic": "news", "payload": {"headline": "hi" * 20}, "id": 3}).encode()
    write("frames", "compressed", b"\x0c\x20" + client_frame(1, deflate(msg), rsv1=True))
    z = deflate(msg)
    write("frames", "compressed-fragmented", b"\x0c\x05" + client_frame(1, z[:10], fin=False, rsv1=True) + client_frame(0, z[10:]))
    write("frames", "huge-length", b"\x04\x02" + client_frame(1, b"x", fin=False) + b"\x80\xff\x7f" + b"\xff" * 7 + b"\0\0\0\0")


def inflate():
    for i, text in enumerate([b"hello hello hello hello", json.dumps({"type": "message", "topic": "t", "payload": list(range(50))}).encode(), bytes(range(256)) * 4]):
        write("inflate", f"deflated-{i}", b"\x02" + deflate(text))
        write("inflate", f"roundtrip-{i}", b"\x82" + text)
    write("inflate", "bomb", b"\x03" + deflate(b"\0" * 200000))
    write("inflate", "two-messages", b"\x02" + deflate(b"one") + b"\xff" + deflate(b"two two"))


def json_request():
    lines = [
        '{"type":"subscribe","topic":"news","id":1}',
        '{"type":"subscribe","topic":"chat:1","recover":{"offset":10,"epoch":"6563f2a1b2c3d-1-7"},"id":4}',
        '{"type":"unsubscribe","topic":"news","id":2}',
        '{"type":"publish","topic":"news","payload":{"headline":"hi"},"id":3}',
        '{"type":"publish","topic":"news","payload":"x","skip_self":true}',
        '{"type":"ping","id":4}',
        '{"type":"auth","token":"eyJhbGciOi...","id":1}',
        '{"type":"refresh","token":"eyJhbGciOi...","id":2}',
        '{"type":"send","user":"alice","payload":{"text":"hi"},"id":3}',
        '{"type":"presence","topic":"chat:1","id":1}',
        '{"type":"presence_stats","topic":"chat:1","id":2}',
        '{"type":"history","topic":"chat:1","since":{"offset":10,"epoch":"e"},"limit":100,"id":3}',
        '{"type":"publish","topic":"","id":18446744073709551615}',
        '{"type":"nope","id":-1}',
        '[1,2,{"a":"\\ud83d\\ude00"}]',
    ]
    for i, line in enumerate(lines):
        write("json_request", f"req-{i:02}", line)


def flatc(schema, root, obj, name, target, prefix=b""):
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, name + ".json")
        with open(src, "w") as f:
            json.dump(obj, f)
        subprocess.run([FLATC, "-b", "-o", d, os.path.join(ROOT, "schemas", schema), src], check=True)
        with open(os.path.join(d, name + ".bin"), "rb") as f:
            write(target, name, prefix + f.read())


def flatbuffers_request():
    payload = list(b'{"x":1}')
    for name, obj in [
        ("subscribe", {"id": 1, "request_type": "Subscribe", "request": {"topic": "news"}}),
        ("subscribe-recover", {"id": 4, "request_type": "Subscribe", "request": {"topic": "chat:1", "recover": {"offset": 10, "epoch": "e-1"}}}),
        ("publish", {"id": 3, "request_type": "Publish", "request": {"topic": "news", "payload": payload, "skip_self": True}}),
        ("ping", {"request_type": "Ping", "request": {}}),
        ("auth", {"id": 1, "request_type": "Auth", "request": {"token": "a.b.c"}}),
        ("send", {"id": 5, "request_type": "Send", "request": {"user": "alice", "payload": payload}}),
        ("history", {"id": 6, "request_type": "History", "request": {"topic": "chat:1", "since": {"offset": 1, "epoch": "e"}, "limit": 0}}),
        ("presence-stats", {"id": 7, "request_type": "PresenceStats", "request": {"topic": "chat:1"}}),
    ]:
        flatc("client.fbs", "ClientFrame", obj, name, "flatbuffers_request")


def token():
    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=")
    header = b'{"alg":"HS256","typ":"JWT"}'
    for i, claims in enumerate([
        {"sub": "alice", "exp": 1764003600},
        {"sub": "bob", "exp": 1764003600, "aud": "shardcast", "iss": "issuer", "subscribe": ["chat:*"], "publish": ["chat:*"]},
        {"sub": "", "nbf": 18446744073709551615, "exp": -1},
        {"sub": "x" * 300, "exp": 1.5e300},
    ]):
        body = json.dumps(claims).encode()
        # Shape 1: header and claims, signed by the target.
        write("token", f"signed-{i}", b"\x80" + header + b"\xff" + body)
        # Shape 0: a whole token as text.
        signing_input = b64(header) + b"." + b64(body)
        sig = b64(hmac.new(b"fuzz-secret", signing_input, hashlib.sha256).digest())
        write("token", f"text-{i}", b"\x01" + signing_input + b"." + sig)
    write("token", "alg-none", b"\x00" + b64(b'{"alg":"none"}') + b"." + b64(b'{"sub":"a"}') + b".")


def resp():
    write("resp", "pushes", b"\x07*3\r\n$7\r\nmessage\r\n$4\r\nchan\r\n$5\r\nhe\r\no\r\n:42\r\n+OK\r\n$-1\r\n-MOVED 3999 127.0.0.1:6381\r\n"
          b"*2\r\n*2\r\n:1\r\n$1\r\nx\r\n*0\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n%1\r\n+k\r\n:2\r\n$0\r\n\r\n*-1\r\n")
    write("resp", "ask", b"\x03-ASK 12182 127.0.0.1:7002\r\n-ERR unknown\r\n>3\r\n$8\r\nsmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n")
    slots = (b"*1\r\n*4\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$40\r\n" + b"a" * 40 + b"\r\n"
             b"*3\r\n$9\r\n127.0.0.1\r\n:7003\r\n$40\r\n" + b"b" * 40 + b"\r\n")
    write("resp", "cluster-slots", b"\x40" + slots)
    write("resp", "read-reply", b"\x11*3\r\n:12\r\n$5\r\nep-r1\r\n*2\r\n*2\r\n:11\r\n$6\r\n{\"a\":1}\r\n*2\r\n:12\r\n$4\r\n\"yo\"\r\n")
    write("resp", "presence-reply", b"\x20*2\r\n:2\r\n*4\r\n$3\r\nc-1\r\n$5\r\nalice\r\n$3\r\nc-2\r\n$0\r\n\r\n")
    write("resp", "resp3", b"\x05%2\r\n+a\r\n#t\r\n+b\r\n,3.5\r\n~2\r\n:1\r\n_\r\n=9\r\ntxt:hello\r\n(123456789012345678901234567890\r\n")


def envelope():
    base = {"origin": "host-a-1:0", "topic": "news", "payload": list(b'{"headline":"hi"}'), "flags": "Json", "seq": 7, "skip": 3}
    for name, obj in [
        ("message", base),
        ("direct", dict(base, user="alice", topic="")),
        ("disconnect", dict(base, flags="Disconnect", code=4010, payload=list(b"bye"))),
        ("join", dict(base, flags="Join", client="host-a-1:0-4", user="alice")),
        ("leave", dict(base, flags="Leave", client="host-a-1:0-4")),
    ]:
        flatc("bridge.fbs", "Envelope", obj, name, "envelope")
        with open(os.path.join(OUT, "envelope", name), "rb") as f:
            inner = f.read()
        write("envelope", "numbered-" + name, b"\0SCH42\0ep-r1\0" + inner)
    write("envelope", "external-json", b'{"type":"raw","n":[1,2,3]}')


def config():
    tuning = os.path.join(ROOT, "tuning")
    for name in sorted(os.listdir(tuning)):
        if name.endswith(".toml"):
            shutil.copy(os.path.join(tuning, name), os.path.join(OUT, "config", name))
    write("config", "namespaces.toml", '[[namespaces]]\npattern = "chat:*"\npresence = true\njoin_leave = true\nhistory_size = 100\nhistory_ttl_ms = 60000\nrecover = true\n')


if __name__ == "__main__":
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(os.path.join(OUT, "config"))
    for make in (handshake, frames, inflate, json_request, flatbuffers_request, token, resp, envelope, config):
        make()
    for target in sorted(os.listdir(OUT)):
        print(f"{target}: {len(os.listdir(os.path.join(OUT, target)))} seeds")
