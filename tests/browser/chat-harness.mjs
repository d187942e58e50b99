// What the chat example's Chromium tests (chat.mjs, chat-fallback.mjs)
// share: a Redis, the two nodes' config, the page served as a site would
// serve it, Chromium, and the page's controls.
import { spawn } from "node:child_process";
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, extname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

import { freePort, SECRET } from "../../clients/js/test/server.js";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** A throwaway redis-server (no persistence) on a free port. */
export async function startRedis() {
  const port = await freePort();
  const child = spawn(process.env.REDIS_SERVER ?? "redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", mkdtempSync(join(tmpdir(), "shardcast-chat-redis-"))], {
    stdio: "ignore",
  });
  await new Promise((r) => setTimeout(r, 300));
  return { child, port };
}

/** The chat example's namespace and auth, on nodes sharing the Redis at `redisPort`. */
export function chatConfig(redisPort) {
  return `[[namespaces]]
pattern = "chat:*"
subscribe = "users"
publish = "users"
presence = true
join_leave = true
history_size = 100
history_ttl_ms = 600000
recover = true
[auth]
hmac_secret = "${SECRET}"
[redis]
url = "redis://127.0.0.1:${redisPort}"
reconnect_min_ms = 50
reconnect_max_ms = 500
presence_ttl_ms = 1000
`;
}

/** examples/chat/ and the client package, served as a site would serve them, on another origin than the nodes. */
export async function serveChatPage() {
  const TYPES = { ".html": "text/html", ".js": "text/javascript" };
  const site = createServer(async (req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    const file = path.startsWith("/shardcast-client/")
      ? join(ROOT, "clients/js/src", path.slice("/shardcast-client/".length))
      : join(ROOT, "examples/chat", path === "/" ? "index.html" : path);
    try {
      const body = await readFile(file);
      res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream" });
      res.end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise((r) => site.listen(0, "127.0.0.1", r));
  return { site, origin: `http://127.0.0.1:${site.address().port}` };
}

/** Debian's headless Chromium. */
export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"],
  });
}

/** Says `text` in the page's room. */
export async function say(page, text) {
  await page.fill("#text", text);
  await page.click("#say button");
}

/** How many log lines of the page contain `text`. */
export function count(page, text) {
  return page.evaluate((t) => [...document.querySelectorAll("#log li")].filter((li) => li.textContent.includes(t)).length, text);
}

/** Waits until a log line of the page contains `text`. */
export function logShows(page, text, ms = 10_000) {
  return page.waitForFunction((t) => [...document.querySelectorAll("#log li")].some((li) => li.textContent.includes(t)), text, { timeout: ms });
}

/** Every open page's log, for a failure's message. */
export async function pageLogs(browser) {
  const logs = [];
  for (const p of browser.contexts().flatMap((c) => c.pages())) logs.push(await p.evaluate(() => document.getElementById("log").innerText).catch(() => "?"));
  return logs.join("\n---\n");
}
