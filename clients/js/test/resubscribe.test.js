// Issue 22, item 17: a subscribe the server refuses for a reason that can
// heal (not_available while its Redis is unreachable) is tried again with
// backoff on the same connection, not only after the next reconnect.
import { test, after } from "node:test";
import assert from "node:assert/strict";

import { Shardcast } from "../src/index.js";
import { Server, Redis, redisConfig, freePort, next } from "./server.js";

const fast = { minDelayMs: 20, maxDelayMs: 200 };
const running = [];
after(() => Promise.all(running.map((p) => p.kill())));

test("a subscribe refused with not_available (Redis down) is retried and succeeds once Redis is up, without reconnecting", async () => {
  // The node's Redis is not running yet: history cannot be read.
  const redisPort = await freePort();
  const s = await Server.start(redisConfig(redisPort));
  running.push(s);
  const c = new Shardcast(s.url, { reconnect: fast });
  let connects = 0;
  c.on("connected", () => connects++);
  const drops = [];
  c.on("disconnected", (d) => drops.push(d));
  c.connect();
  await next(c, "connected");

  const sub = c.subscribe("chat:later", { recover: true });
  const errors = [];
  sub.on("error", (e) => errors.push(e));
  const refused = await next(sub, "error");
  assert.equal(refused.code, "not_available", refused.message);
  assert.equal(sub.state, "subscribing", "still trying");

  const subscribed = next(sub, "subscribed", 10000);
  const redis = await Redis.start(redisPort);
  running.push(redis);
  const ev = await subscribed;
  assert.equal(sub.state, "subscribed");
  assert.equal(typeof ev.epoch, "string");
  assert.equal(connects, 1, "the same connection: no reconnect");
  assert.deepEqual(drops, []);
  assert.ok(errors.every((e) => e.code === "not_available"), errors.map((e) => e.code).join());

  // And it is a working subscription.
  const got = next(sub, "message");
  await c.publish("chat:later", "hello");
  assert.equal((await got).payload, "hello");
  c.disconnect();
});

test("a subscribe refused for good (forbidden) is not retried", async () => {
  const s = await Server.start(`[[namespaces]]\npattern = "secret:*"\nsubscribe = "nobody"\npublish = "nobody"\n`);
  running.push(s);
  const c = new Shardcast(s.url, { reconnect: fast });
  c.connect();
  await next(c, "connected");
  const sub = c.subscribe("secret:x");
  const errors = [];
  sub.on("error", (e) => errors.push(e));
  await next(sub, "error");
  assert.equal(sub.state, "unsubscribed");
  // Well past several retry delays of this backoff.
  await new Promise((r) => setTimeout(r, 600));
  assert.deepEqual(errors.map((e) => e.code), ["forbidden"], "refused once, never asked again");
  c.disconnect();
});
