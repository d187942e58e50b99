// Issue 22, item 15: a client given several nodes' URLs fails over to the
// next one when its node goes away, and recovers there what it missed.
import { test, after } from "node:test";
import assert from "node:assert/strict";

import { Shardcast } from "../src/index.js";
import { Server, Redis, redisConfig, countingWebSocket, freePort, next, until } from "./server.js";

const fast = { minDelayMs: 20, maxDelayMs: 200 };
const running = [];
after(() => Promise.all(running.map((p) => p.kill())));

test("a node killed for good: the client fails over to the next URL and recovers every message once, in order", async () => {
  const redis = await Redis.start();
  running.push(redis);
  const config = redisConfig(redis.port);
  const [a, b] = await Promise.all([Server.start(config), Server.start(config)]);
  running.push(a, b);

  const c = new Shardcast([a.url, b.url], { reconnect: fast });
  const welcomes = [];
  c.on("connected", (w) => welcomes.push(w));
  c.connect();
  const sub = c.subscribe("chat:failover", { recover: true });
  const seen = [];
  sub.on("message", (m) => seen.push(m));
  const subscribed = [];
  sub.on("subscribed", (ev) => subscribed.push(ev));
  await next(sub, "subscribed");
  assert.equal(c.url, a.url, "the first URL first");

  const p = new Shardcast(b.url, { reconnect: fast });
  p.connect();
  const onB = await next(p, "connected");
  assert.notEqual(welcomes[0].node, onB.node, "two nodes");

  // Node A dies in the middle of the stream (some of what it was sent may
  // still be on the way) and stays dead; B keeps numbering from Redis, so
  // the subscriber can pick up where it was. The publisher goes on at a
  // pace that spans the failover.
  const total = 300;
  let killed;
  for (let i = 1; i <= total; i++) {
    await p.publish("chat:failover", i);
    if (i === 100) {
      await until(() => seen.length >= 50, "live messages through node A");
      killed = a.kill();
    }
    if (i > 100) await new Promise((r) => setTimeout(r, 2));
  }
  await killed;
  await until(() => seen.length >= total, `all ${total} messages (got ${seen.length})`, 15000);
  // Anything duplicated would arrive right behind: give it a moment.
  await new Promise((r) => setTimeout(r, 200));

  const expected = Array.from({ length: total }, (_, i) => i + 1);
  assert.deepEqual(seen.map((m) => m.payload), expected, "every message once, in order");
  assert.deepEqual(seen.map((m) => m.offset), expected, "contiguous offsets");
  assert.equal(new Set(seen.map((m) => m.epoch)).size, 1, "one epoch across the nodes");
  assert.equal(c.url, b.url);
  assert.equal(c.info.node, onB.node, "now on node B");
  assert.equal(welcomes.length, 2);
  assert.equal(subscribed.length, 2);
  assert.equal(subscribed[1].recovered, true, "recovered on the other node");
  c.disconnect();
  p.disconnect();
});

test("a failed attempt moves on to the next URL, and the list wraps around", async () => {
  const s = await Server.start("");
  running.push(s);
  const dead = `ws://127.0.0.1:${await freePort()}/ws`;
  const { WebSocket, stats } = countingWebSocket();
  const c = new Shardcast([dead, s.url], { reconnect: fast, WebSocket });
  c.connect();
  await next(c, "connected");
  assert.deepEqual(stats.urls, [dead, s.url]);
  // The node restarts: the next attempt goes to the next URL (the list's
  // first again), which fails, then back to the node.
  const back = next(c, "connected");
  await s.restart();
  await back;
  assert.deepEqual(stats.urls.slice(0, 4), [dead, s.url, dead, s.url]);
  assert.equal(c.url, s.url);
  c.disconnect();
  // A single URL still works as before.
  const one = new Shardcast(s.url, { reconnect: fast });
  one.connect();
  await next(one, "connected");
  assert.equal(one.url, s.url);
  assert.deepEqual(one.urls, [s.url]);
  one.disconnect();
});
