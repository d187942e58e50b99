// Test helpers: the real shardcast binary on a loopback port, HS256 tokens, and connected clients.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { writeFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createServer } from "node:net";
import WebSocket from "ws";

import { Shardcast } from "../src/index.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
/** The binary the test command built (override with SHARDCAST_BIN). */
export const BIN = process.env.SHARDCAST_BIN ?? join(ROOT, "target", "debug", "shardcast");
export const SECRET = "js-client-test-secret";
/** The redis-server to start for multi-node tests (override with REDIS_SERVER). */
export const REDIS_BIN = process.env.REDIS_SERVER ?? "redis-server";

/** A namespace with history and recovery (and presence), no publish rate limit. */
export const HISTORY = `[[namespaces]]
pattern = "chat:*"
subscribe = "anyone"
publish = "anyone"
presence = true
join_leave = true
history_size = 1000
history_ttl_ms = 600000
recover = true
[limits]
publish_rate = 0
max_message_bytes = 1048576
`;

/**
 * The config of a node using the Redis at `port`, with `rest` after it; the
 * bridge retries a lost Redis quickly so that tests need not wait seconds.
 */
export function redisConfig(port, rest = HISTORY) {
  return `[redis]\nurl = "redis://127.0.0.1:${port}"\nreconnect_min_ms = 50\nreconnect_max_ms = 250\n${rest}`;
}

/** A free loopback port. */
export function freePort() {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/**
 * A running shardcast; `restart()` brings it back on the same port. Without
 * a port it listens on one the kernel picks (port 0, read back from its
 * `listening on` line): a port picked here and handed over could be taken
 * by another test's server meanwhile.
 */
export class Server {
  static async start(config = "", port = 0) {
    const s = new Server(config, port);
    await s.boot();
    return s;
  }

  constructor(config, port) {
    const dir = mkdtempSync(join(tmpdir(), "shardcast-js-"));
    this.configPath = join(dir, "config.toml");
    writeFileSync(this.configPath, config);
    this.port = port;
  }

  get url() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  boot() {
    const child = spawn(BIN, ["--listen", `127.0.0.1:${this.port}`, "--admin-listen", "", "--shards", "2", "--config", this.configPath], {
      stdio: ["ignore", "pipe", process.env.SHARDCAST_LOG ? "inherit" : "ignore"],
    });
    this.child = child;
    return new Promise((resolve, reject) => {
      let out = "";
      child.stdout.on("data", (d) => {
        out += d;
        const listening = /listening on wss?:\/\/127\.0\.0\.1:(\d+)/.exec(out);
        if (listening) {
          this.port = Number(listening[1]);
          resolve();
        }
      });
      child.on("exit", (code) => reject(new Error(`shardcast exited (${code}) before listening: ${out}`)));
    });
  }

  /** Stops the process (SIGKILL: nothing drained, like a crash) and waits. */
  kill(signal = "SIGKILL") {
    return stop(this.child, signal);
  }

  async restart() {
    await this.kill();
    await this.boot();
  }
}

/** A throwaway redis-server (no persistence) on a loopback port. */
export class Redis {
  static async start(port = 0) {
    const r = new Redis(port || (await freePort()));
    await r.boot();
    return r;
  }

  constructor(port) {
    this.port = port;
    this.dir = mkdtempSync(join(tmpdir(), "shardcast-js-redis-"));
  }

  boot() {
    const args = ["--port", String(this.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", this.dir];
    const child = spawn(REDIS_BIN, args, { stdio: ["ignore", "pipe", "ignore"] });
    this.child = child;
    return new Promise((resolve, reject) => {
      let out = "";
      child.stdout.on("data", (d) => {
        out += d;
        if (out.includes("Ready to accept connections")) resolve();
      });
      child.on("error", reject);
      child.on("exit", (code) => reject(new Error(`redis-server exited (${code}) before it was ready: ${out}`)));
    });
  }

  kill() {
    return stop(this.child, "SIGKILL");
  }
}

/** Signals `child` (when still running) and resolves once it exited. */
function stop(child, signal) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.on("exit", () => resolve());
    child.kill(signal);
  });
}

/**
 * A `ws` WebSocket class (for `options.WebSocket`) that counts its sockets:
 * `urls` every URL opened (token left out), `live` the sockets created and
 * not yet closed, `maxLive` the most of them at any moment.
 */
export function countingWebSocket() {
  const stats = { urls: [], live: 0, maxLive: 0 };
  class Counting extends WebSocket {
    constructor(url, ...rest) {
      super(url, ...rest);
      stats.urls.push(url.split("?")[0]);
      stats.live++;
      stats.maxLive = Math.max(stats.maxLive, stats.live);
      this.on("close", () => stats.live--);
    }
  }
  return { WebSocket: Counting, stats };
}

/** An HS256 JWT for `sub`, expiring in `seconds`, with `claims` added (e.g. a subscription token's `channel`). */
export function token(sub, seconds = 600, secret = SECRET, claims = {}) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + seconds, ...claims })}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

/** A client with `options`, its `error` events collected in `errors`, once connected. */
export async function connectedClient(url, options) {
  const c = new Shardcast(url, options);
  c.errors = [];
  c.on("error", (e) => c.errors.push(e));
  const up = next(c, "connected");
  c.connect();
  await up;
  return c;
}

/** Resolves with the next `event` of `emitter` (rejects after `ms`). */
export function next(emitter, event, ms = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${ms} ms`)), ms);
    const fn = (v) => {
      clearTimeout(timer);
      emitter.off(event, fn);
      resolve(v);
    };
    emitter.on(event, fn);
  });
}

/** Polls `cond` until true (rejects after `ms`). */
export async function until(cond, what, ms = 10000) {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
