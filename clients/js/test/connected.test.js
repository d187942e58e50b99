// The order of things at a (re)connect, seen from a server written here (on
// `ws`) that records every request: subscriptions made inside a "connected"
// handler are sent once, publishes queued while disconnected go before
// the ones the handler makes, and `connectData` goes before everything.
import { test } from "node:test";
import assert from "node:assert/strict";
import { WebSocketServer } from "ws";

import { Shardcast } from "../src/index.js";
import { next, until } from "./server.js";

async function recordingServer() {
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0, handleProtocols: (p) => [...p][0] });
  await new Promise((resolve) => wss.once("listening", resolve));
  const requests = [];
  wss.on("connection", (ws) => {
    ws.send(JSON.stringify({ type: "welcome", client: "n:1-1", node: "n", shard: 0 }));
    ws.on("message", (data) => {
      const req = JSON.parse(String(data));
      requests.push(req);
      ws.send(JSON.stringify({ type: "ack", id: req.id }));
    });
  });
  return { wss, requests, url: `ws://127.0.0.1:${wss.address().port}/ws` };
}

test("a subscribe inside the connected handler is sent once; queued publishes go first", async () => {
  const { wss, requests, url } = await recordingServer();
  const c = new Shardcast(url);
  const queued = c.publish("feed", "queued while disconnected");
  let sub;
  const onConnected = () => {
    c.off("connected", onConnected);
    sub = c.subscribe("room");
    c.publish("feed", "from the handler");
  };
  c.on("connected", onConnected);
  const up = next(c, "connected");
  c.connect();
  await up;
  await next(sub, "subscribed");
  await queued;
  await new Promise((resolve) => setTimeout(resolve, 100));
  const subscribes = requests.filter((r) => r.type === "subscribe" && r.topic === "room");
  assert.equal(subscribes.length, 1, JSON.stringify(requests));
  const publishes = requests.filter((r) => r.type === "publish").map((r) => r.payload);
  assert.deepEqual(publishes, ["queued while disconnected", "from the handler"]);
  c.disconnect();
  await new Promise((resolve) => wss.close(resolve));
});

test("connectData is the first frame of every connection, before queued requests; without it no connect is sent", async () => {
  const { wss, requests, url } = await recordingServer();
  const c = new Shardcast(url, { reconnect: { minDelayMs: 20, maxDelayMs: 200 }, connectData: { device: "phone" } });
  const queued = c.publish("feed", "queued");
  c.subscribe("room");
  const up = next(c, "connected");
  c.connect();
  await up;
  await queued;
  assert.deepEqual(requests[0], { type: "connect", data: { device: "phone" } }, JSON.stringify(requests));
  assert.equal(requests.filter((r) => r.type === "connect").length, 1);
  // A new connection: connect first again.
  const before = requests.length;
  const again = next(c, "connected");
  for (const ws of wss.clients) ws.terminate();
  await again;
  await until(() => requests.length >= before + 2, "the resubscribe");
  assert.deepEqual(requests[before], { type: "connect", data: { device: "phone" } }, JSON.stringify(requests.slice(before)));
  c.disconnect();

  const plain = new Shardcast(url);
  const plainUp = next(plain, "connected");
  plain.connect();
  await plainUp;
  await plain.publish("feed", "x");
  assert.equal(requests.filter((r) => r.type === "connect").length, 2, "none from a client without connectData");
  plain.disconnect();
  await new Promise((resolve) => wss.close(resolve));
});
