// shardcast-client against the real shardcast binary.
import { test, after } from "node:test";
import assert from "node:assert/strict";

import { Shardcast, ShardcastError, backoffDelay } from "../src/index.js";
import { Server, SECRET, HISTORY, token, next, until } from "./server.js";

const fast = { minDelayMs: 20, maxDelayMs: 200 };

const servers = [];
async function server(config = "") {
  const s = await Server.start(config);
  servers.push(s);
  return s;
}
after(() => Promise.all(servers.map((s) => s.kill())));

test("backoff is full jitter, bounded, and grows", () => {
  const opts = { minDelayMs: 200, maxDelayMs: 20000 };
  for (let attempt = 0; attempt < 40; attempt++) {
    const cap = Math.min(20000, 200 * 2 ** attempt);
    assert.equal(backoffDelay(attempt, opts, () => 1), cap, "the top of the range");
    const d = backoffDelay(attempt, opts);
    assert.ok(d >= 0 && d <= cap, `attempt ${attempt}: ${d}`);
    assert.equal(backoffDelay(attempt, opts, () => 0), 0, "full jitter starts at zero");
  }
  const spread = new Set(Array.from({ length: 50 }, () => Math.round(backoffDelay(5, opts))));
  assert.ok(spread.size > 40, "jittered: clients do not come back together");
  assert.equal(backoffDelay(100, opts, () => 1), 20000);
});

test("connects, subscribes, publishes with acks, and maps errors to codes", async () => {
  const s = await server("[limits]\npublish_rate = 0\n");
  const a = new Shardcast(s.url, { reconnect: fast });
  const b = new Shardcast(s.url, { reconnect: fast });
  const [aUp, bUp] = [next(a, "connected"), next(b, "connected")];
  a.connect();
  b.connect();
  const welcome = await aUp;
  assert.equal(a.state, "connected");
  assert.match(welcome.client, /:\d+-\d+$/);
  const sub = a.subscribe("news");
  await next(sub, "subscribed");
  await bUp;
  const got = next(sub, "message");
  await b.publish("news", { hello: "world" });
  assert.deepEqual((await got).payload, { hello: "world" });
  await assert.rejects(b.publish("", 1), (e) => e instanceof ShardcastError && e.code === "invalid_topic");
  a.disconnect();
  b.disconnect();
  assert.equal(a.state, "disconnected");
});

test("a restarted server: the client reconnects with backoff and resubscribes", async () => {
  const s = await server("[limits]\npublish_rate = 0\n");
  const c = new Shardcast(s.url, { reconnect: fast });
  c.connect();
  const sub = c.subscribe("live");
  await next(sub, "subscribed");
  const dropped = next(c, "disconnected");
  await s.restart();
  const d = await dropped;
  assert.equal(d.reconnect, true, JSON.stringify(d));
  await next(sub, "subscribed");
  const p = new Shardcast(s.url, { reconnect: fast });
  p.connect();
  await next(p, "connected");
  const got = next(sub, "message");
  await p.publish("live", "after the restart");
  assert.equal((await got).payload, "after the restart");
  c.disconnect();
  p.disconnect();
});

test("messages published while away are recovered exactly once, in order", async () => {
  const s = await server(HISTORY);
  const c = new Shardcast(s.url, { reconnect: fast });
  c.connect();
  const sub = c.subscribe("chat:room", { recover: true });
  const seen = [];
  sub.on("message", (m) => seen.push(m));
  await next(sub, "subscribed");
  const p = new Shardcast(s.url, { reconnect: fast });
  p.connect();
  await next(p, "connected");
  for (let i = 1; i <= 50; i++) await p.publish("chat:room", i);
  await until(() => seen.length === 50, "the first 50");
  // The network drops (no close frame): the client must come back by itself.
  const resubscribed = next(sub, "subscribed");
  c._conn.drop();
  const published = [];
  for (let i = 51; i <= 250; i++) published.push(p.publish("chat:room", i));
  await Promise.all(published);
  const { recovered } = await resubscribed;
  assert.equal(recovered, true);
  for (let i = 251; i <= 300; i++) await p.publish("chat:room", i);
  await until(() => seen.length >= 300, "all 300", 15000);
  assert.deepEqual(seen.map((m) => m.payload), Array.from({ length: 300 }, (_, i) => i + 1), "exactly once, in order");
  assert.deepEqual(seen.map((m) => m.offset), Array.from({ length: 300 }, (_, i) => i + 1));
  c.disconnect();
  p.disconnect();
});

test("recovered is false when the history is gone (server restarted: new epoch)", async () => {
  const s = await server(HISTORY);
  const c = new Shardcast(s.url, { reconnect: fast });
  c.connect();
  const sub = c.subscribe("chat:lost", { recover: true });
  await next(sub, "subscribed");
  await c.publish("chat:lost", "x");
  await until(() => sub.offset === 1, "the first message");
  const before = sub.epoch;
  const again = next(sub, "subscribed");
  await s.restart();
  const ev = await again;
  assert.equal(ev.recovered, false);
  assert.notEqual(sub.epoch, before);
  c.disconnect();
});

test("the token is refreshed before it expires", async () => {
  const s = await server(`[auth]\nhmac_secret = "${SECRET}"\n`);
  let calls = 0;
  const c = new Shardcast(s.url, {
    reconnect: fast,
    getToken: async () => {
      calls++;
      return token("alice", 3);
    },
  });
  const closes = [];
  c.on("disconnected", (d) => closes.push(d));
  c.connect();
  const w = await next(c, "connected");
  assert.equal(w.user, "alice");
  // Past the first token's expiry: still the same connection.
  await new Promise((r) => setTimeout(r, 4500));
  assert.equal(c.state, "connected");
  assert.deepEqual(closes, [], "never closed with 4002");
  assert.ok(calls >= 2, `getToken called ${calls} times`);
  c.disconnect();
});

test("4001 without getToken stops; with getToken it asks again and connects", async () => {
  const s = await server(`[auth]\nhmac_secret = "${SECRET}"\n`);
  const bad = new Shardcast(s.url, { reconnect: fast, token: token("eve", 600, "wrong-secret") });
  bad.connect();
  const d = await next(bad, "disconnected");
  assert.equal(d.code, 4001);
  assert.equal(d.reconnect, false);
  assert.equal(bad.state, "disconnected");
  let first = true;
  const retrying = new Shardcast(s.url, {
    reconnect: fast,
    getToken: async () => {
      const t = first ? token("eve", 600, "wrong-secret") : token("eve");
      first = false;
      return t;
    },
  });
  const seen = [];
  retrying.on("disconnected", (x) => seen.push(x));
  retrying.connect();
  const w = await next(retrying, "connected");
  assert.equal(w.user, "eve");
  assert.equal(seen[0].code, 4001);
  assert.equal(seen[0].reconnect, true);
  retrying.disconnect();
});

test("publishes wait in a bounded queue while disconnected", async () => {
  const s = await server("[limits]\npublish_rate = 0\n");
  await s.kill();
  const c = new Shardcast(s.url, { reconnect: fast, maxPending: 10 });
  c.connect();
  const queued = Array.from({ length: 10 }, (_, i) => c.publish("q", i));
  await assert.rejects(c.publish("q", 10), (e) => e.code === "pending_full");
  await s.boot();
  await Promise.all(queued);
  assert.equal(c.state, "connected");
  c.disconnect();
});

test("presence, join and leave through a subscription", async () => {
  const s = await server(HISTORY);
  const a = new Shardcast(s.url, { reconnect: fast });
  a.connect();
  const sub = a.subscribe("chat:p");
  await next(sub, "subscribed");
  const b = new Shardcast(s.url, { reconnect: fast });
  b.connect();
  const joined = next(sub, "join");
  const bsub = b.subscribe("chat:p");
  await next(bsub, "subscribed");
  const bInfo = b.info;
  assert.equal((await joined).client, bInfo.client);
  assert.deepEqual(Object.keys(await sub.presence()).sort(), [a.info.client, bInfo.client].sort());
  assert.deepEqual(await sub.presenceStats(), { clients: 2, users: 0 });
  const left = next(sub, "leave");
  bsub.unsubscribe();
  assert.equal((await left).client, bInfo.client);
  a.disconnect();
  b.disconnect();
});

test("the FlatBuffers protocol: recovery, presence, history and bytes", async () => {
  const s = await server(HISTORY);
  const c = new Shardcast(s.url, { reconnect: fast, protocol: "flatbuffers" });
  const up = next(c, "connected");
  c.connect();
  assert.match((await up).client, /:\d+-\d+$/);
  const sub = c.subscribe("chat:fb", { recover: true });
  const seen = [];
  sub.on("message", (m) => seen.push(m));
  await next(sub, "subscribed");
  const p = new Shardcast(s.url, { reconnect: fast });
  const pUp = next(p, "connected");
  p.connect();
  await pUp;
  for (let i = 1; i <= 20; i++) await p.publish("chat:fb", { i });
  await until(() => seen.length === 20, "20 messages");
  const back = next(sub, "subscribed");
  c._conn.drop();
  for (let i = 21; i <= 40; i++) await p.publish("chat:fb", { i });
  assert.equal((await back).recovered, true);
  await until(() => seen.length === 40, "40 messages");
  assert.deepEqual(seen.map((m) => m.payload.i), Array.from({ length: 40 }, (_, i) => i + 1));
  assert.deepEqual(seen.map((m) => m.offset), Array.from({ length: 40 }, (_, i) => i + 1));
  const h = await sub.history({ limit: 2 });
  assert.deepEqual(h.publications.map((x) => x.offset), [39, 40]);
  assert.deepEqual(await sub.presenceStats(), { clients: 1, users: 0 });
  assert.deepEqual(Object.keys(await sub.presence()), [c.info.client]);
  // Bytes that are not JSON travel as bytes, to either encoding.
  const psub = p.subscribe("bin");
  await next(psub, "subscribed");
  const got = next(psub, "message");
  await c.publish("bin", new Uint8Array([0, 255, 7]));
  assert.deepEqual([...(await got).payload], [0, 255, 7]);
  await assert.rejects(c.publish("", 1), (e) => e.code === "invalid_topic");
  c.disconnect();
  p.disconnect();
});
