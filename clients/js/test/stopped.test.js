// Issue 22, item 16: once the client has stopped for good (a final close,
// or disconnect()), a publish or send must not wait in the queue forever.
import { test, after } from "node:test";
import assert from "node:assert/strict";

import { Shardcast, ShardcastError } from "../src/index.js";
import { Server, SECRET, token, next } from "./server.js";

const fast = { minDelayMs: 20, maxDelayMs: 200 };
const servers = [];
after(() => Promise.all(servers.map((s) => s.kill())));

/** `promise`, or a rejection naming `what` if it is still pending after `ms`. */
function within(promise, what, ms = 1000) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} still pending after ${ms} ms`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** Asserts that `promise` rejects at once with a ShardcastError `disconnected`. */
async function rejectsDisconnected(promise, what) {
  await assert.rejects(within(promise, what), (e) => {
    assert.ok(e instanceof ShardcastError, `${what}: ${e}`);
    assert.equal(e.code, "disconnected", `${what}: ${e.message}`);
    return true;
  });
}

test("publish and send after a final close (4008, 4001 without getToken) reject at once with disconnected", async () => {
  const s = await Server.start(`[auth]\nhmac_secret = "${SECRET}"\n[limits]\nmax_connections_per_user = 1\n`);
  servers.push(s);
  const first = new Shardcast(s.url, { reconnect: fast, token: token("bob") });
  first.connect();
  await next(first, "connected");

  // A second connection of the same user: 4008, no reconnect.
  const second = new Shardcast(s.url, { reconnect: fast, token: token("bob") });
  second.connect();
  const queued = second.publish("news", "queued before the close");
  const d = await next(second, "disconnected");
  assert.equal(d.code, 4008);
  assert.equal(d.reconnect, false);
  await rejectsDisconnected(queued, "a publish queued before the 4008");
  await rejectsDisconnected(second.publish("news", "after"), "a publish after the 4008");
  await rejectsDisconnected(second.send("bob", "after"), "a send after the 4008");

  // A refused token and no getToken to ask for another: 4001, stopped.
  const refused = new Shardcast(s.url, { reconnect: fast, token: token("eve", 600, "wrong-secret") });
  refused.connect();
  assert.equal((await next(refused, "disconnected")).code, 4001);
  await rejectsDisconnected(refused.publish("news", "after"), "a publish after the 4001");
  first.disconnect();
});

test("publish and send after disconnect() reject at once; connect() queues them again", async () => {
  const s = await Server.start("[limits]\npublish_rate = 0\n");
  servers.push(s);
  const c = new Shardcast(s.url, { reconnect: fast });
  // Before the first connect() a publish waits for it, as it always did.
  const early = c.publish("news", "before connect");
  c.connect();
  await within(early, "a publish queued before connect()", 5000);
  c.disconnect();
  await rejectsDisconnected(c.publish("news", "after disconnect"), "a publish after disconnect()");
  await rejectsDisconnected(c.send("someone", "after disconnect"), "a send after disconnect()");
  // Connecting again: publishes queue (and go out) again.
  c.connect();
  await within(c.publish("news", "after connect"), "a publish after connect() again", 5000);
  c.disconnect();
});
