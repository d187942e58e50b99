// Issue 26: the chat example (examples/chat/) in headless Chromium where
// WebSocket cannot get through. Alice's page has `window.WebSocket`
// replaced by one that fails as a proxy stripping `Upgrade` makes it fail:
// her client must fall back to HTTP-streaming; then, in a page where fetch
// cannot stream either (`ReadableStream` gone), to SSE. Each time she talks
// both ways (room messages, direct messages, presence) with Bob, a
// WebSocket user on the other node, the two nodes sharing a Redis; and her
// page comes back (and recovers what Bob said meanwhile) after her node
// restarts. The page is served from another origin than the nodes, so
// the fallback requests are cross-origin (CORS, preflights). Saves
// target/chat-fallback-http_stream.png and target/chat-fallback-sse.png.
//
//   SHARDCAST_BIN=target/debug/shardcast node tests/browser/chat-fallback.mjs
//
// Prints "ok" at the end; anything else is a failure (exit 1).
import { join } from "node:path";

import { Server, token } from "../../clients/js/test/server.js";
import { ROOT, startRedis, chatConfig, serveChatPage, launchChromium, say, count, logShows, pageLogs } from "./chat-harness.mjs";

/** Processes to kill however the test ends (a failure exits at once). */
const children = [];
const fail = (message) => {
  console.error("chat fallback test: " + message);
  for (const child of children) child.kill("SIGKILL");
  process.exit(1);
};
const timer = setTimeout(() => fail("gave up after 120 s"), 120_000);
process.on("uncaughtException", (e) => fail(`uncaught: ${e}`));

// Redis, and two nodes sharing it.
const { child: redis, port: redisPort } = await startRedis();
children.push(redis);
const config = chatConfig(redisPort);
const a = await Server.start(config).catch((e) => fail(`node A: ${e}`));
const b = await Server.start(config).catch((e) => fail(`node B: ${e}`));
// (`child` changes when a node restarts.)
children.push({ kill: (signal) => a.child.kill(signal) }, { kill: (signal) => b.child.kill(signal) });

// The page is served from another origin than the nodes: the fallback requests are cross-origin.
const { site, origin } = await serveChatPage();
const browser = await launchChromium();

/** Page scripts run before the page's own: what a hostile network takes away. */
function breakWebSocket() {
  // Every socket fails the way a refused upgrade makes it fail.
  window.WebSocket = class BrokenWebSocket extends EventTarget {
    constructor(url) {
      super();
      this.url = url;
      this.readyState = 0;
      window.brokenSockets = (window.brokenSockets ?? 0) + 1;
      setTimeout(() => {
        this.readyState = 3;
        const error = new Event("error");
        this.onerror?.(error);
        this.dispatchEvent(error);
        const close = new CloseEvent("close", { code: 1006, reason: "", wasClean: false });
        this.onclose?.(close);
        this.dispatchEvent(close);
      }, 0);
    }
    send() {
      throw new DOMException("WebSocket is not open", "InvalidStateError");
    }
    close() {}
  };
}
function breakStreaming() {
  // fetch cannot stream a response body without ReadableStream.
  delete window.ReadableStream;
}

const errors = [];
let step = "starting";
async function open(user, node, scripts = []) {
  step = `opening ${user}'s page`;
  const context = await browser.newContext({ viewport: { width: 900, height: 560 } });
  for (const script of scripts) await context.addInitScript(script);
  const page = await context.newPage();
  page.on("pageerror", (e) => errors.push(`${user}: ${e}`));
  await page.goto(`${origin}/?server=${encodeURIComponent(node.url)}&token=${token(user)}`);
  await page.waitForFunction(() => document.body.dataset.state === "connected", null, { timeout: 15_000 });
  return page;
}
const direct = async (page, to, text) => {
  await page.fill("#to", to);
  await page.fill("#text", text);
  await page.click("#dm");
};
const sees = (page, text, ms) => {
  step = `waiting for "${text}"`;
  return logShows(page, text, ms);
};
const transport = (page) => page.evaluate(() => window.chat.client.transport);
const presenceIs = (page, n) => {
  step = `presence at ${n}`;
  return page.waitForFunction((n) => document.getElementById("count").textContent === String(n), n, { timeout: 15_000 });
};

try {
  // Bob: a plain WebSocket user, on node B.
  const bob = await open("bob", b);
  if ((await transport(bob)) !== "websocket") fail(`bob is on ${await transport(bob)}`);

  const rounds = [
    { expect: "http_stream", scripts: [breakWebSocket] },
    { expect: "sse", scripts: [breakWebSocket, breakStreaming] },
  ];
  for (const { expect, scripts } of rounds) {
    step = `alice over ${expect}`;
    const alice = await open("alice", a, scripts);
    const got = await transport(alice);
    if (got !== expect) fail(`alice's client is on ${got}, not ${expect}`);
    if ((await alice.evaluate(() => window.brokenSockets)) < 1) fail("the page never tried WebSocket");
    if (!(await alice.textContent("#me")).includes(`over ${expect}`)) fail(`the page does not say ${expect}`);
    await sees(bob, "alice joined");
    await presenceIs(alice, 2);
    await say(alice, `hello bob, over ${expect}`);
    await sees(bob, `hello bob, over ${expect}`);
    await say(bob, `hi alice, you are on ${expect}`);
    await sees(alice, `hi alice, you are on ${expect}`);
    await direct(alice, "bob", `a secret for bob over ${expect}`);
    await sees(bob, `a secret for bob over ${expect}`);
    await direct(bob, "alice", `a secret for alice over ${expect}`);
    await sees(alice, `a secret for alice over ${expect}`);

    // Alice's node restarts: her page comes back (WebSocket first, then
    // the fallback that worked) and recovers what Bob said meanwhile.
    step = `node A restarting under ${expect}`;
    const before = await alice.evaluate(() => window.brokenSockets);
    await a.kill();
    await alice.waitForFunction(() => document.body.dataset.state !== "connected", null, { timeout: 10_000 });
    await say(bob, `said while alice was away (${expect})`);
    await new Promise((r) => setTimeout(r, 300));
    await a.boot();
    step = `alice back over ${expect}`;
    await alice.waitForFunction(() => document.body.dataset.state === "connected", null, { timeout: 20_000 });
    await sees(alice, `said while alice was away (${expect})`);
    await sees(alice, "back: nothing missed");
    if ((await count(alice, `said while alice was away (${expect})`)) !== 1) fail("the missed message arrived more than once");
    if ((await transport(alice)) !== expect) fail(`back on ${await transport(alice)}, not ${expect}`);
    if ((await alice.evaluate(() => window.brokenSockets)) <= before) fail("the reconnect did not try WebSocket first");
    await say(alice, `alice is back over ${expect}`);
    await sees(bob, `alice is back over ${expect}`);

    await alice.screenshot({ path: join(ROOT, `target/chat-fallback-${expect}.png`) });
    step = `closing alice's ${expect} page`;
    await alice.context().close();
    await sees(bob, "alice left");
    await bob.evaluate(() => (document.getElementById("log").innerHTML = ""));
  }
  if (errors.length) fail("page errors: " + errors.join("; "));
  console.log("ok");
} catch (e) {
  fail(`${step}: ${e}\n${await pageLogs(browser)}`);
} finally {
  clearTimeout(timer);
  await browser.close();
  site.close();
  await a.kill();
  await b.kill();
  redis.kill("SIGKILL");
}
