// Issue 22, item 18: disconnect() and connect() again while an async
// getToken is still pending must not leave two WebSockets open.
import { test, after } from "node:test";
import assert from "node:assert/strict";

import { Shardcast } from "../src/index.js";
import { Server, SECRET, token, countingWebSocket, next } from "./server.js";

const fast = { minDelayMs: 20, maxDelayMs: 200 };
const servers = [];
after(() => Promise.all(servers.map((s) => s.kill())));

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

test("connect(), disconnect(), connect() during a slow getToken: one socket at a time, and one connected at the end", async () => {
  const s = await Server.start(`[auth]\nhmac_secret = "${SECRET}"\n`);
  servers.push(s);
  const { WebSocket, stats } = countingWebSocket();
  let asked = 0;
  const c = new Shardcast(s.url, {
    reconnect: fast,
    WebSocket,
    getToken: async () => {
      asked++;
      await sleep(300);
      return token("carol");
    },
  });
  const up = next(c, "connected");
  c.connect();
  c.disconnect();
  c.connect();
  await up;
  // Past the first getToken's answer (and a reconnect or two, were any).
  await sleep(700);
  assert.equal(c.state, "connected");
  assert.equal(stats.maxLive, 1, `at most one socket at a time (opened: ${stats.urls.length})`);
  assert.equal(stats.live, 1, "one socket open at the end");
  assert.ok(asked >= 1);

  // The same race against a connection that is already up.
  c.disconnect();
  c.connect();
  c.disconnect();
  c.connect();
  await next(c, "connected");
  await sleep(700);
  assert.equal(c.state, "connected");
  assert.equal(stats.maxLive, 1, "still never two at once");
  assert.equal(stats.live, 1);
  c.disconnect();
  await sleep(100);
  assert.equal(stats.live, 0, "disconnect() closes it");
});
