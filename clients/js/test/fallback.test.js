// Issue 26: the fallback transports (docs/protocol.md, "Fallback
// transports") against the real binary. Everything the client does over a
// WebSocket, over HTTP-streaming and over SSE: subscribe, publish with acks,
// errors, presence, direct messages (with a WebSocket user), recovery after
// the stream drops, reconnect after a restart, token refresh; then the
// fallback itself: a WebSocket that fails or hangs gives way, JSON whatever
// the protocol, WebSocket first again at every reconnect, the emulation
// POST's answers (429 retried in order, 404 reconnects).
//
// SSE runs on Node's EventSource, which Node 20.18+/22 has behind
// --experimental-eventsource (`npm test` and tests/it/clients.rs pass it);
// without it the SSE tests are skipped (the browser test covers SSE too).
import { test, after } from "node:test";
import assert from "node:assert/strict";

import WsPackage from "ws";

import { Shardcast, ShardcastError } from "../src/index.js";
import { endpointUrl } from "../src/transports.js";
import { Server, SECRET, HISTORY, token, next, until, connectedClient } from "./server.js";

const fast = { minDelayMs: 20, maxDelayMs: 200 };
const hasEventSource = typeof globalThis.EventSource === "function";
const NO_SSE = "no global EventSource here: run node with --experimental-eventsource (npm test does)";
const FALLBACKS = ["http_stream", "sse"];
const skip = (transport) => (transport === "sse" && !hasEventSource ? NO_SSE : false);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Users with tokens (direct messages need a sender with a `sub`), the history namespace. */
const CONFIG = `[auth]\nhmac_secret = "${SECRET}"\n${HISTORY}`;

const servers = [];
after(() => Promise.all(servers.map((s) => s.kill())));
async function server(config = CONFIG) {
  const s = await Server.start(config);
  servers.push(s);
  return s;
}

/** A client of `user` that uses `transport` only, connected; its errors in `errors`. */
function connected(s, user, transport, options = {}) {
  return connectedClient(s.url, { reconnect: fast, token: token(user), ...(transport ? { transports: [transport] } : {}), ...options });
}

/** A WebSocket class whose every socket fails as a proxy stripping `Upgrade` makes it: error, then close 1006. */
function failingWebSocket() {
  const stats = { made: 0 };
  class Failing {
    constructor() {
      stats.made++;
      this.readyState = 0;
      setTimeout(() => {
        this.readyState = 3;
        this.onerror?.({ type: "error" });
        this.onclose?.({ code: 1006, reason: "" });
      }, 5);
    }
    send() {
      throw new Error("not open");
    }
    close() {}
  }
  return { WebSocket: Failing, stats };
}

test("the fallback endpoints sit beside the WebSocket URL", () => {
  assert.equal(endpointUrl("ws://127.0.0.1:8080/ws", "stream"), "http://127.0.0.1:8080/stream");
  assert.equal(endpointUrl("wss://example.com/rt/ws?token=x#f", "emulation"), "https://example.com/rt/emulation");
  assert.equal(endpointUrl("wss://example.com/rt/ws", "/events"), "https://example.com/events");
  assert.equal(endpointUrl("https://example.com/ws", "sse"), "https://example.com/sse");
});

for (const transport of FALLBACKS) {
  test(`${transport}: subscribe, publish with acks in order, errors, rpc; the welcome says ${transport}`, { skip: skip(transport) }, async () => {
    const s = await server();
    const c = await connected(s, "alice", transport);
    assert.equal(c.info.transport, transport);
    assert.equal(c.transport, transport);
    assert.equal(c.info.user, "alice");
    const p = await connected(s, "bob");
    assert.equal(p.transport, "websocket", "a WebSocket peer");

    const sub = c.subscribe("chat:a");
    await next(sub, "subscribed");
    const psub = p.subscribe("chat:a");
    await next(psub, "subscribed");
    const got = next(sub, "message");
    const echoed = next(psub, "message");
    await p.publish("chat:a", { from: "bob" });
    assert.deepEqual((await got).payload, { from: "bob" });
    await echoed;

    // A burst of publishes from the fallback client: batched into POSTs,
    // acknowledged, and delivered in order.
    const seen = [];
    psub.on("message", (m) => seen.push(m.payload));
    await Promise.all(Array.from({ length: 300 }, (_, i) => c.publish("chat:a", i)));
    await until(() => seen.length >= 300, `300 messages (got ${seen.length})`);
    assert.deepEqual(seen, Array.from({ length: 300 }, (_, i) => i), "in publish order");

    // Errors come back down the stream, mapped to codes.
    await assert.rejects(c.publish("", 1), (e) => e instanceof ShardcastError && e.code === "invalid_topic");
    await assert.rejects(c.rpc("anything"), (e) => e instanceof ShardcastError && e.code === "not_available");
    const h = await sub.history();
    assert.equal(h.offset, 301);
    assert.deepEqual(c.errors, []);
    c.disconnect();
    p.disconnect();
  });

  test(`${transport}: presence, join and leave, direct messages both ways with a WebSocket user`, { skip: skip(transport) }, async () => {
    const s = await server();
    const c = await connected(s, "alice", transport);
    const sub = c.subscribe("chat:here");
    await next(sub, "subscribed");
    const p = await connected(s, "bob");
    const joined = next(sub, "join");
    const psub = p.subscribe("chat:here");
    await next(psub, "subscribed");
    assert.equal((await joined).user, "bob");

    const clients = await sub.presence();
    assert.deepEqual(Object.values(clients).map((e) => e.user).sort(), ["alice", "bob"]);
    assert.ok(clients[c.info.client], "the fallback session's client id, as for any connection");
    assert.deepEqual(await sub.presenceStats(), { clients: 2, users: 2 });

    const toAlice = next(c, "direct");
    await p.send("alice", { text: "hi alice" });
    assert.deepEqual(await toAlice, { from: "bob", payload: { text: "hi alice" } });
    const toBob = next(p, "direct");
    await c.send("bob", { text: "hi bob" });
    assert.deepEqual(await toBob, { from: "alice", payload: { text: "hi bob" } });

    const left = next(sub, "leave");
    psub.unsubscribe();
    assert.equal((await left).user, "bob");

    // disconnect() drops the response: the server ends the session, as a
    // TCP close ends a WebSocket one.
    const psub2 = p.subscribe("chat:here");
    await next(psub2, "subscribed");
    const aliceLeft = next(psub2, "leave");
    c.disconnect();
    assert.equal((await aliceLeft).user, "alice");
    p.disconnect();
  });

  test(`${transport}: the stream drops; the client reconnects and recovers every message once, in order`, { skip: skip(transport) }, async () => {
    const s = await server();
    const c = await connected(s, "alice", transport);
    const sub = c.subscribe("chat:room", { recover: true });
    const seen = [];
    sub.on("message", (m) => seen.push(m));
    await next(sub, "subscribed");
    const p = await connected(s, "bob");
    for (let i = 1; i <= 50; i++) await p.publish("chat:room", i);
    await until(() => seen.length === 50, "the first 50");
    const resubscribed = next(sub, "subscribed");
    const first = c.info.client;
    c._conn.drop();
    const published = [];
    for (let i = 51; i <= 250; i++) published.push(p.publish("chat:room", i));
    await Promise.all(published);
    const { recovered } = await resubscribed;
    assert.equal(recovered, true);
    assert.notEqual(c.info.client, first, "a new session");
    assert.equal(c.transport, transport);
    for (let i = 251; i <= 300; i++) await p.publish("chat:room", i);
    await until(() => seen.length >= 300, "all 300", 15000);
    await sleep(100);
    assert.deepEqual(seen.map((m) => m.payload), Array.from({ length: 300 }, (_, i) => i + 1), "exactly once, in order");
    assert.deepEqual(seen.map((m) => m.offset), Array.from({ length: 300 }, (_, i) => i + 1));
    c.disconnect();
    p.disconnect();
  });

  test(`${transport}: a restarted server: the client reconnects with backoff and resubscribes`, { skip: skip(transport) }, async () => {
    const s = await server();
    const c = await connected(s, "alice", transport);
    const sub = c.subscribe("live");
    await next(sub, "subscribed");
    const dropped = next(c, "disconnected");
    await s.restart();
    const d = await dropped;
    assert.equal(d.reconnect, true, JSON.stringify(d));
    await next(sub, "subscribed");
    assert.equal(c.transport, transport);
    const p = await connected(s, "bob");
    const got = next(sub, "message");
    await p.publish("live", "after the restart");
    assert.equal((await got).payload, "after the restart");
    c.disconnect();
    p.disconnect();
  });

  test(`${transport}: the token is refreshed before it expires; a refused one closes 4001 and stops`, { skip: skip(transport) }, async () => {
    const s = await server(`[auth]\nhmac_secret = "${SECRET}"\nleeway_ms = 0\n`);
    let asked = 0;
    const c = await connected(s, "carol", transport, {
      token: undefined,
      getToken: async () => {
        asked++;
        return token("carol", 2);
      },
    });
    const drops = [];
    c.on("disconnected", (d) => drops.push(d));
    const sub = c.subscribe("feed");
    await next(sub, "subscribed");
    // Past several of the 2 s tokens' expiries: still the same session.
    const client = c.info.client;
    await sleep(4500);
    assert.deepEqual(drops, [], "no 4002");
    assert.equal(c.info.client, client);
    assert.ok(asked >= 3, `getToken asked ${asked} times`);
    const got = next(sub, "message");
    await c.publish("feed", "still here");
    assert.equal((await got).payload, "still here");
    c.disconnect();

    // A token that fails verification: the server's close frame ends the
    // stream; without getToken the client stops.
    const refused = new Shardcast(s.url, { reconnect: fast, transports: [transport], token: token("eve", 600, "wrong-secret") });
    refused.connect();
    const d = await next(refused, "disconnected");
    assert.equal(d.code, 4001, JSON.stringify(d));
    assert.equal(d.reconnect, false);
    await assert.rejects(refused.publish("feed", 1), (e) => e.code === "disconnected");
  });
}

test("a WebSocket that fails falls back to HTTP-streaming, speaking JSON though FlatBuffers was asked; every reconnect tries WebSocket first again", async () => {
  const s = await server();
  const { WebSocket, stats } = failingWebSocket();
  const c = await connected(s, "alice", undefined, { WebSocket, protocol: "flatbuffers" });
  assert.equal(c.transport, "http_stream");
  assert.equal(c.protocol, "flatbuffers", "the option stays as given");
  assert.equal(stats.made, 1);
  const sub = c.subscribe("chat:fb", { recover: true });
  await next(sub, "subscribed");
  const p = await connected(s, "bob", undefined, { protocol: "flatbuffers" });
  assert.equal(p.transport, "websocket");
  const got = next(sub, "message");
  await p.publish("chat:fb", { over: "flatbuffers" });
  assert.deepEqual((await got).payload, { over: "flatbuffers" });
  const bytes = next(sub, "message");
  await p.publish("chat:fb", new Uint8Array([0, 1, 255]));
  assert.deepEqual((await bytes).payload, new Uint8Array([0, 1, 255]), "payload_base64 from a JSON-only session");

  const back = next(c, "connected");
  c._conn.drop();
  assert.equal((await back).transport, "http_stream");
  assert.equal(stats.made, 2, "WebSocket tried again first");
  assert.deepEqual(c.errors, []);
  c.disconnect();
  p.disconnect();
});

test("a WebSocket that never opens gives way after fallbackDelayMs; one that opens is waited for", async () => {
  const s = await server();
  const closed = [];
  class Hanging {
    constructor() {
      this.readyState = 0;
    }
    send() {}
    close(code) {
      closed.push(code);
    }
  }
  const started = Date.now();
  const c = await connected(s, "alice", undefined, { WebSocket: Hanging, fallbackDelayMs: 300 });
  const took = Date.now() - started;
  assert.equal(c.transport, "http_stream");
  assert.ok(took >= 300 && took < 5000, `fell back after ${took} ms`);
  assert.equal(closed.length, 1, "the hanging socket was closed");
  c.disconnect();

  // A WebSocket that opened waits for its welcome, however late it comes
  // (a connect hook, the server's connect_wait_ms): here every frame it
  // receives is held back 800 ms.
  class Late extends WsPackage {
    set onmessage(fn) {
      super.onmessage = (ev) => setTimeout(() => fn(ev), 800);
    }
  }
  const w = await connected(s, "alice", undefined, { WebSocket: Late, fallbackDelayMs: 200 });
  assert.equal(w.transport, "websocket");
  w.disconnect();
});

test("transports: the order given; the fallback that worked comes right after WebSocket at the next reconnect", { skip: hasEventSource ? false : NO_SSE }, async () => {
  const s = await server();
  const asSse = await connected(s, "alice", undefined, { transports: ["sse", "http_stream"] });
  assert.equal(asSse.transport, "sse");
  asSse.disconnect();

  // HTTP-streaming broken on the way (a proxy that refuses the POST): SSE.
  const { WebSocket, stats } = failingWebSocket();
  const streams = [];
  const fetch = (url, init) => {
    if (String(url).endsWith("/stream")) {
      streams.push(url);
      return Promise.resolve(new Response("blocked", { status: 502 }));
    }
    return globalThis.fetch(url, init);
  };
  const c = await connected(s, "alice", undefined, { WebSocket, fetch });
  assert.equal(c.transport, "sse");
  assert.equal(streams.length, 1);
  const back = next(c, "connected");
  c._conn.drop();
  assert.equal((await back).transport, "sse");
  assert.equal(stats.made, 2, "WebSocket first");
  assert.equal(streams.length, 1, "then SSE, which worked, before HTTP-streaming");
  c.disconnect();
  assert.throws(() => new Shardcast(s.url, { transports: ["carrier_pigeon"] }), (e) => e.code === "bad_option");
  assert.throws(() => new Shardcast(s.url, { transports: [] }), (e) => e.code === "bad_option");
});

test("emulation answers: a 429 is retried after Retry-After, in order; a 404 (session gone) reconnects", async () => {
  const s = await server();
  let refuse = 0;
  let bogus = 0;
  const bodies = [];
  const fetch = async (url, init) => {
    if (String(url).endsWith("/emulation")) {
      bodies.push(JSON.parse(init.body));
      if (refuse > 0) {
        refuse--;
        return new Response(null, { status: 429, headers: { "retry-after": "0.2" } });
      }
      if (bogus > 0) {
        bogus--;
        // A session the server does not know: its real 404.
        init = { ...init, body: JSON.stringify({ ...JSON.parse(init.body), session: "0000:nowhere" }) };
      }
    }
    return globalThis.fetch(url, init);
  };
  const c = await connected(s, "alice", "http_stream", { fetch });
  const sub = c.subscribe("chat:q");
  const seen = [];
  sub.on("message", (m) => seen.push(m.payload));
  await next(sub, "subscribed");

  refuse = 2;
  const started = Date.now();
  await Promise.all(Array.from({ length: 20 }, (_, i) => c.publish("chat:q", i)));
  assert.ok(Date.now() - started >= 400, "waited twice for Retry-After");
  await until(() => seen.length >= 20, "20 messages");
  assert.deepEqual(seen, Array.from({ length: 20 }, (_, i) => i), "in order, once each");
  assert.equal(refuse, 0);

  bogus = 1;
  const dropped = next(c, "disconnected");
  const back = next(sub, "subscribed");
  await assert.rejects(c.publish("chat:q", "lost"), (e) => e.code === "disconnected");
  assert.equal((await dropped).reconnect, true);
  await back;
  await c.publish("chat:q", "after");
  await until(() => seen.includes("after"), "a message on the new session");
  // Every request went in a POST, in id order (a refused batch again, whole).
  const ids = bodies.flatMap((b) => b.requests.map((r) => r.id));
  for (let i = 1; i < ids.length; i++) assert.ok(ids[i] > ids[i - 1] || ids.slice(0, i).includes(ids[i]), `order: ${ids}`);
  c.disconnect();
});
