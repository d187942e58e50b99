// The chat example (examples/chat/) in two headless Chromium pages, each on
// its own shardcast node, the two nodes sharing a Redis: messages both ways,
// presence, a direct message, then node B is killed and restarted and Bob's
// page must come back and recover what Alice said meanwhile (exactly once).
// Saves target/chat-alice.png and target/chat-bob.png.
//
//   SHARDCAST_BIN=target/debug/shardcast node tests/browser/chat.mjs
//
// Prints "ok" at the end; anything else is a failure (exit 1).
import { join } from "node:path";

import { Server, token } from "../../clients/js/test/server.js";
import { ROOT, startRedis, chatConfig, serveChatPage, launchChromium, say, count, logShows, pageLogs } from "./chat-harness.mjs";

const fail = (message) => {
  console.error("chat test: " + message);
  process.exit(1);
};
const timer = setTimeout(() => fail("gave up after 90 s"), 90_000);

// Redis, and two nodes sharing it.
const { child: redis, port: redisPort } = await startRedis();
const config = chatConfig(redisPort);
const a = await Server.start(config);
const b = await Server.start(config);

const { site, origin } = await serveChatPage();
const browser = await launchChromium();
const errors = [];
async function open(user, node) {
  step = `opening ${user}'s page`;
  const page = await browser.newPage({ viewport: { width: 900, height: 560 } });
  page.on("pageerror", (e) => errors.push(`${user}: ${e}`));
  await page.goto(`${origin}/?server=${encodeURIComponent(node.url)}&token=${token(user)}`);
  await page.waitForFunction(() => document.body.dataset.state === "connected", null, { timeout: 10_000 });
  return page;
}
let step = "starting";
const sees = (page, text, ms) => {
  step = `waiting for "${text}"`;
  return logShows(page, text, ms);
};

try {
  const alice = await open("alice", a);
  const bob = await open("bob", b);
  await sees(alice, "bob joined");
  await say(alice, "hello bob, from node A");
  await sees(bob, "hello bob, from node A");
  await say(bob, "hi alice, from node B");
  await sees(alice, "hi alice, from node B");
  await alice.waitForFunction(() => document.getElementById("count").textContent === "2", null, { timeout: 10_000 });
  await alice.fill("#to", "bob");
  await alice.fill("#text", "a secret, just for bob");
  await alice.click("#dm");
  await sees(bob, "a secret, just for bob");

  // Node B dies; Alice keeps talking; B comes back and Bob's page recovers.
  // (A killed node sends no leave: its presence entries expire instead,
  // within [redis] presence_ttl_ms.)
  await b.kill();
  step = "bob's page noticing";
  await bob.waitForFunction(() => document.body.dataset.state !== "connected", null, { timeout: 10_000 });
  await say(alice, "said while bob was away");
  await new Promise((r) => setTimeout(r, 300));
  await b.boot();
  await bob.waitForFunction(() => document.body.dataset.state === "connected", null, { timeout: 20_000 });
  await sees(bob, "said while bob was away");
  await sees(bob, "back: nothing missed");
  await bob.waitForFunction(() => document.getElementById("count").textContent === "2", null, { timeout: 15_000 });
  if ((await count(bob, "said while bob was away")) !== 1) fail("the missed message arrived more than once");
  await say(bob, "bob is back");
  await sees(alice, "bob is back");
  // Bob's old entry (from the killed node) expires; the new one stays.
  step = "presence back to two";
  await alice.waitForFunction(() => document.getElementById("count").textContent === "2", null, { timeout: 15_000 });
  // Rooms: Bob moves to another room; Alice's message there reaches him,
  // the lobby's no longer does.
  step = "changing rooms";
  await bob.fill("#room", "chat:side");
  await bob.click("#rooms button");
  await sees(bob, "you are in chat:side");
  await alice.fill("#room", "chat:side");
  await alice.click("#rooms button");
  await sees(bob, "alice joined");
  await say(alice, "over here");
  await sees(bob, "over here");
  await alice.screenshot({ path: join(ROOT, "target/chat-alice.png") });
  await bob.screenshot({ path: join(ROOT, "target/chat-bob.png") });
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
