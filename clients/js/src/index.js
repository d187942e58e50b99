// shardcast-client: the shardcast protocol (docs/protocol.md, JSON or
// FlatBuffers encoding) for browsers and Node.js. One connection per
// `Shardcast`, to one of the nodes it is given; it reconnects with jittered
// exponential backoff (to the next node), resubscribes every
// `Subscription`, recovers what history topics published meanwhile,
// refreshes its token (and subscription tokens) before it expires, and
// queues publishes (boundedly) while disconnected. It speaks to the
// server's backend hooks: connect data, subscribe data, rpc. Where WebSocket
// cannot get through it falls back to HTTP-streaming, then to SSE
// (src/transports.js), and does all of the above over them too.
//
// No runtime dependency in browsers with the JSON protocol. In Node.js it
// uses the global `WebSocket` when there is one (Node 22+), else the `ws`
// package; with neither, HTTP-streaming still works (fetch, Node 18+). The
// FlatBuffers protocol needs the `flatbuffers` package (WebSocket only).

import { jsonCodec, flatbuffersCodec } from "./codec.js";
import { TRANSPORTS, DEFAULT_PATHS, endpointUrl, webSocketConnection, httpStreamConnection, sseConnection } from "./transports.js";

/** Close codes after which the client does not come back by itself. */
const FINAL_CLOSES = new Set([4008, 4010]);
/** Token problems: worth a reconnect only with a `getToken` to ask again. */
const TOKEN_CLOSES = new Set([4001, 4002]);
/** A connection that stayed up this long resets the backoff. */
const STABLE_MS = 5000;
/**
 * Subscribe refusals that asking again cannot heal (a malformed request,
 * the topic, permissions, the connection's topic limit): the application
 * must act. Anything else (`not_available` while the server cannot reach
 * Redis, `timeout`, ...) is tried again with backoff.
 */
const PERMANENT_REFUSALS = new Set([
  "bad_json",
  "bad_request",
  "unknown_type",
  "invalid_topic",
  "forbidden",
  "unauthorized",
  "too_many_subscriptions",
]);

/**
 * An error from the server (`code` is the protocol's error code, e.g.
 * `forbidden`, `rate_limited`) or from the client (`timeout`,
 * `pending_full`, `disconnected`). `backendCode` is the backend's own code
 * when one of its hooks refused the request (the error frame's
 * `backend_code`: a refused subscribe or publish in a `proxy` namespace, an
 * rpc's `error`), else undefined.
 */
export class ShardcastError extends Error {
  /** @param {string} code @param {string} message @param {number} [backendCode] */
  constructor(code, message, backendCode) {
    super(message);
    this.name = "ShardcastError";
    /** @type {string} */
    this.code = code;
    /** @type {number|undefined} */
    this.backendCode = backendCode;
  }
}

/** The ShardcastError of an error frame. */
function serverError(msg) {
  return new ShardcastError(msg.code, msg.message, msg.backend_code ?? undefined);
}

/**
 * The delay before reconnect attempt `attempt` (0 = the first after a
 * drop): exponential backoff with "full jitter", uniform in
 * [0, min(maxDelayMs, minDelayMs * 2^attempt)], so that the clients of a
 * restarted node come back spread out, not as a herd.
 * @param {number} attempt
 * @param {{minDelayMs: number, maxDelayMs: number}} opts
 * @param {() => number} [random]
 */
export function backoffDelay(attempt, { minDelayMs, maxDelayMs }, random = Math.random) {
  const cap = Math.min(maxDelayMs, minDelayMs * 2 ** Math.min(attempt, 30));
  return random() * cap;
}

/** A minimal event emitter (browsers and Node alike). */
class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._handlers = new Map();
  }
  /** @param {string} event @param {Function} fn */
  on(event, fn) {
    if (!this._handlers.has(event)) this._handlers.set(event, new Set());
    this._handlers.get(event).add(fn);
    return this;
  }
  /** @param {string} event @param {Function} fn */
  off(event, fn) {
    this._handlers.get(event)?.delete(fn);
    return this;
  }
  /** @param {string} event @param {any} [value] */
  emit(event, value) {
    for (const fn of [...(this._handlers.get(event) ?? [])]) {
      try {
        fn(value);
      } catch (e) {
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }
}

/**
 * How long to wait before renewing a token that expires at `exp` (seconds
 * since the epoch): until a tenth of the time left (at least 1 s, at most
 * 60 s) before it.
 */
function renewDelay(exp) {
  const left = exp * 1000 - Date.now();
  const margin = Math.max(1000, Math.min(60000, left / 10));
  return Math.max(0, left - margin);
}

/** The seconds-since-epoch `exp` of a JWT, or undefined. */
function tokenExpiry(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = typeof atob === "function" ? atob(part) : Buffer.from(part, "base64").toString("utf8");
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" ? exp : undefined;
  } catch {
    return undefined;
  }
}

let cachedWs;
/** The WebSocket class: the global one, else the `ws` package's (Node.js before 22). */
async function webSocketClass() {
  if (typeof globalThis.WebSocket === "function") return globalThis.WebSocket;
  if (!cachedWs) {
    try {
      cachedWs = (await import("ws")).default;
    } catch {
      throw new ShardcastError("no_websocket", "no global WebSocket: install the `ws` package (Node.js before 22)");
    }
  }
  return cachedWs;
}

/**
 * One subscription to a topic. Created by `Shardcast.subscribe`; survives
 * reconnects (it is subscribed again, recovering from the last offset it
 * delivered when the topic has history and `recover` was asked), with its
 * `data` and its subscription token (a fresh one from `getToken` when given).
 *
 * Events: `subscribed` {recovered, offset, epoch, data}, `message` {payload,
 * offset, epoch}, `join` / `leave` {client, user}, `error` (a
 * ShardcastError), `unsubscribed` {reason, server}.
 */
export class Subscription extends Emitter {
  /**
   * @param {Shardcast} client @param {string} topic
   * @param {{recover?: boolean, data?: any, token?: string, getToken?: (topic: string) => Promise<string>}} options
   */
  constructor(client, topic, options) {
    super();
    this.topic = topic;
    this.recover = Boolean(options.recover);
    /** The last offset delivered and its epoch (history topics). */
    this.offset = undefined;
    this.epoch = undefined;
    /** The `data` of the last subscribe ack (a `proxy` namespace's subscribe hook), or undefined. */
    this.ackData = undefined;
    /** Sent with every (re)subscribe: the subscribe hook's `data`. */
    this._data = options.data;
    /** The subscription token sent with every (re)subscribe (`token` namespaces). */
    this._token = options.token;
    /** Asked for a fresh token before every (re)subscribe and before the token's `exp`. */
    this._getToken = options.getToken;
    /** The timer of the renewal before the subscription token's `exp`. */
    this._renew = undefined;
    /** @type {"unsubscribed"|"subscribing"|"subscribed"} */
    this.state = "unsubscribed";
    this._client = client;
    /** Refused subscribes in a row on this connection (the backoff's attempt). */
    this._attempt = 0;
    /** The timer of the next try after a refusal. */
    this._retry = undefined;
  }

  /** Stops the subscription (and forgets its position). */
  unsubscribe() {
    this._client._unsubscribe(this);
  }

  /** @returns {Promise<Record<string, {user: string|null}>>} */
  async presence() {
    return (await this._client._request({ type: "presence", topic: this.topic })).clients;
  }

  /** @returns {Promise<{clients: number, users: number}>} */
  async presenceStats() {
    const r = await this._client._request({ type: "presence_stats", topic: this.topic });
    return { clients: r.clients, users: r.users };
  }

  /**
   * @param {{since?: {offset: number, epoch: string}, limit?: number}} [opts]
   * @returns {Promise<{publications: {offset: number, payload: any}[], offset: number, epoch: string}>}
   */
  async history(opts = {}) {
    const r = await this._client._request({ type: "history", topic: this.topic, ...opts });
    return { publications: r.publications, offset: r.offset, epoch: r.epoch };
  }

  /** Delivers one message unless its offset was delivered already. */
  _deliver(payload, offset, epoch) {
    if (offset !== undefined) {
      if (epoch === this.epoch && this.offset !== undefined && offset <= this.offset) return;
      this.offset = offset;
      this.epoch = epoch;
    }
    this.emit("message", { payload, offset, epoch });
  }
}

/**
 * A connection to shardcast: to one node at a time of those it is given,
 * over the first of `transports` that gets through.
 *
 * Events: `connecting`, `connected` (the welcome: {client, node, shard,
 * user, transport, data}), `disconnected` {code, reason, reconnect},
 * `unsubscribed` {topic, reason} (the server ended a subscription),
 * `direct`, `error`.
 */
export class Shardcast extends Emitter {
  /**
   * @param {string|string[]} url e.g. "wss://example.com/ws", or several
   *   nodes' URLs (of one cluster sharing a Redis), tried in order: every
   *   failed attempt and every lost connection moves on to the next one,
   *   and after the last comes the first again
   * @param {object} [options]
   * @param {string} [options.token] a connection token (JWT)
   * @param {() => Promise<string>} [options.getToken] called on every
   *   connect and before the token expires (then sent as `refresh`)
   * @param {"json"|"flatbuffers"} [options.protocol] the encoding;
   *   "flatbuffers" needs the `flatbuffers` package
   * @param {{minDelayMs?: number, maxDelayMs?: number}} [options.reconnect]
   * @param {number} [options.timeoutMs] how long a request waits for its reply
   * @param {number} [options.maxPending] publishes and sends queued while disconnected
   * @param {any} [options.WebSocket] a WebSocket class to use instead of the global one
   * @param {any} [options.connectData] sent as `{"type":"connect","data":…}`,
   *   the first frame of every connection, for the server's connect hook
   *   (in the connect request of a fallback session)
   * @param {("websocket"|"http_stream"|"sse")[]} [options.transports] the
   *   transports, in the order tried at every (re)connect (default all
   *   three, in this order); one that fails before its welcome, or does not
   *   get through within `fallbackDelayMs`, gives way to the next
   * @param {number} [options.fallbackDelayMs] how long a transport that is
   *   not the last one has to get through (default 3000): a WebSocket to
   *   open, an HTTP-streaming response to bring its welcome
   * @param {{http_stream?: string, sse?: string, emulation?: string}} [options.paths]
   *   the fallback endpoints' paths: from `/` on they replace the URL's
   *   path, else its last segment (default "stream", "sse", "emulation":
   *   `wss://host/ws` → `https://host/stream`)
   * @param {typeof fetch} [options.fetch] a fetch to use instead of the global one
   * @param {any} [options.EventSource] an EventSource class to use instead of the global one
   */
  constructor(url, options = {}) {
    super();
    const protocol = options.protocol ?? "json";
    if (protocol !== "json" && protocol !== "flatbuffers") {
      throw new ShardcastError("bad_option", `protocol must be "json" or "flatbuffers", not ${JSON.stringify(protocol)}`);
    }
    this.protocol = protocol;
    /** The WebSocket codec, once loaded (FlatBuffers loads its package on first connect). */
    this._codec = protocol === "json" ? jsonCodec : undefined;
    const transports = options.transports ?? TRANSPORTS;
    if (
      !Array.isArray(transports) ||
      transports.length === 0 ||
      !transports.every((t) => TRANSPORTS.includes(t)) ||
      new Set(transports).size !== transports.length
    ) {
      throw new ShardcastError("bad_option", `transports must be a non-empty list of distinct ${TRANSPORTS.map((t) => JSON.stringify(t)).join(", ")}`);
    }
    /** The transports, in the order they are tried. */
    this.transports = [...transports];
    /** The fallback transport that last got a welcome: tried right after WebSocket from then on. */
    this._fellBackTo = undefined;
    const urls = typeof url === "string" ? [url] : Array.isArray(url) ? [...url] : [];
    if (urls.length === 0 || !urls.every((u) => typeof u === "string" && u !== "")) {
      throw new ShardcastError("bad_option", "url must be a URL or a non-empty list of URLs");
    }
    /** The nodes' URLs, in the order they are tried. */
    this.urls = urls;
    /** Which of `urls` the current (or next) attempt goes to. */
    this._urlIndex = 0;
    this.options = {
      token: options.token,
      getToken: options.getToken,
      reconnect: { minDelayMs: 200, maxDelayMs: 20000, ...(options.reconnect ?? {}) },
      timeoutMs: options.timeoutMs ?? 10000,
      maxPending: options.maxPending ?? 1000,
      WebSocket: options.WebSocket,
      connectData: options.connectData,
      fallbackDelayMs: options.fallbackDelayMs ?? 3000,
      paths: { ...DEFAULT_PATHS, ...(options.paths ?? {}) },
      fetch: options.fetch,
      EventSource: options.EventSource,
    };
    /** @type {"disconnected"|"connecting"|"connected"} */
    this.state = "disconnected";
    /** The welcome of the current connection. */
    this.info = undefined;
    /** @type {Map<string, Subscription>} */
    this._subs = new Map();
    /** Requests waiting for their reply: id -> {resolve, reject, timer}. */
    this._requests = new Map();
    /** Publishes and sends waiting for a connection. */
    this._pending = [];
    this._nextId = 1;
    this._attempt = 0;
    this._wanted = false;
    /** Why the client stopped for good (a final close, disconnect()), until
     * the next connect(); undefined before the first connect(). */
    this._stopped = undefined;
    /** Bumped by every attempt and by disconnect(): an older attempt still
     * awaiting its token sees it changed and opens nothing. */
    this._generation = 0;
    /** The current connection (src/transports.js), welcomed or not yet. */
    this._conn = undefined;
    this._token = options.token;
    this._timers = new Set();
  }

  /** The URL of the current connection, or of the next attempt. */
  get url() {
    return this.urls[this._urlIndex];
  }

  /** The transport of the current connection ("websocket", "http_stream" or "sse"), or undefined. */
  get transport() {
    return this.state === "connected" ? this._conn?.transport : undefined;
  }

  /**
   * Connects (and keeps reconnecting until `disconnect()`), to the first of
   * `urls` first.
   */
  connect() {
    if (this._wanted) return;
    this._wanted = true;
    this._stopped = undefined;
    this._urlIndex = 0;
    this._open();
  }

  /**
   * Closes the connection; no reconnect. Queued publishes and sends are
   * rejected, and so are new ones until `connect()`.
   */
  disconnect() {
    this._generation++;
    for (const t of this._timers) clearTimeout(t);
    this._timers.clear();
    const conn = this._conn;
    this._conn = undefined;
    if (conn) conn.close(1000);
    this._stop("disconnect() was called");
    this._dropped(1000, "client disconnect", false);
  }

  /**
   * Subscribes to `topic` (now, or as soon as connected; again after every
   * reconnect, until `unsubscribe()` or the server ends it).
   * @param {string} topic
   * @param {object} [options]
   * @param {boolean} [options.recover] recover what was missed while away (history topics)
   * @param {any} [options.data] sent with every subscribe, for the backend's
   *   subscribe hook (`proxy` namespaces)
   * @param {string} [options.token] a subscription token (`token` namespaces)
   * @param {(topic: string) => Promise<string>} [options.getToken] asked for
   *   a subscription token before every subscribe and before its `exp` (the
   *   subscription is then renewed with it)
   * @returns {Subscription} the subscription to `topic`: a new one, or the
   *   one there is (whose options stay as they were)
   */
  subscribe(topic, options = {}) {
    let sub = this._subs.get(topic);
    if (!sub) {
      sub = new Subscription(this, topic, options);
      this._subs.set(topic, sub);
    }
    if (this.state === "connected" && sub.state === "unsubscribed") this._subscribe(sub);
    return sub;
  }

  /** The subscription to `topic`, if any. */
  getSubscription(topic) {
    return this._subs.get(topic);
  }

  /**
   * Publishes `payload` (any JSON value) to `topic`. Settles with the
   * server's ack (or error). While disconnected it waits in a queue of at
   * most `maxPending`; beyond, it rejects at once (`pending_full`). Once the
   * client has stopped (`disconnect()`, or a close it does not come back
   * from) it rejects at once with `disconnected`, until `connect()`.
   */
  publish(topic, payload, { skipSelf = false } = {}) {
    const req = { type: "publish", topic, payload };
    if (skipSelf) req.skip_self = true;
    return this._send(req).then(() => undefined);
  }

  /** A direct message to every connection of `user` (queued like `publish`). */
  send(user, payload) {
    return this._send({ type: "send", user, payload }).then(() => undefined);
  }

  /**
   * Calls the backend's rpc hook (`[proxy] rpc_url`) with `method` and
   * `data` (any JSON value). Resolves with the `data` of its answer (`null`
   * when it gave none); rejects with a ShardcastError (`backend_error` with
   * the backend's `backendCode` when it answered an error, `not_available`
   * when it failed, `timeout` after `timeoutMs`). Queued like `publish`.
   * @param {string} method
   * @param {any} [data]
   * @returns {Promise<any>}
   */
  rpc(method, data) {
    const req = { type: "rpc", method };
    if (data !== undefined) req.data = data;
    return this._send(req).then((reply) => reply.data ?? null);
  }

  // ---- internals ----

  _send(req) {
    if (this.state === "connected") return this._request(req);
    // Nothing would ever send it: waiting would be forever.
    if (this._stopped !== undefined) return Promise.reject(new ShardcastError("disconnected", this._stopped));
    if (this._pending.length >= this.options.maxPending) {
      return Promise.reject(new ShardcastError("pending_full", `more than ${this.options.maxPending} requests queued while disconnected`));
    }
    return new Promise((resolve, reject) => this._pending.push({ req, resolve, reject }));
  }

  _request(req) {
    if (this.state !== "connected") return Promise.reject(new ShardcastError("disconnected", "not connected"));
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._requests.delete(id);
        reject(new ShardcastError("timeout", `no reply within ${this.options.timeoutMs} ms`));
      }, this.options.timeoutMs);
      this._requests.set(id, { resolve, reject, timer });
      this._conn.send({ ...req, id });
    });
  }

  _later(ms, fn) {
    const t = setTimeout(() => {
      this._timers.delete(t);
      fn();
    }, ms);
    this._timers.add(t);
  }

  async _open() {
    if (!this._wanted) return;
    const generation = ++this._generation;
    // disconnect() (and connect() again) may come while this attempt awaits:
    // then a newer attempt, or none, owns the connection, and this one must
    // neither open a socket nor report anything.
    const superseded = () => generation !== this._generation || !this._wanted;
    this.state = "connecting";
    this.emit("connecting");
    const url = this.url;
    let WS;
    let noWebSocket;
    try {
      if (this.options.getToken) {
        const token = await this.options.getToken();
        if (superseded()) return;
        this._token = token;
      }
      if (this.transports.includes("websocket")) {
        // Without a WebSocket class the other transports may still do.
        WS = this.options.WebSocket ?? (await webSocketClass().catch((e) => void (noWebSocket = e)));
        this._codec ??= await flatbuffersCodec().catch(() => {
          throw new ShardcastError("no_flatbuffers", 'protocol "flatbuffers" needs the `flatbuffers` package (npm install flatbuffers)');
        });
      }
      if (superseded()) return;
    } catch (e) {
      if (superseded()) return;
      this.emit("error", e);
      // A missing package will not appear by retrying.
      const fixable = e?.code !== "no_flatbuffers";
      this._dropped(1006, String(e?.message ?? e), fixable);
      return;
    }
    this._tryTransport({ url, WS, noWebSocket, order: this._transportOrder(), failures: [], generation }, 0);
  }

  /**
   * The transports in the order this attempt tries them: as given, except
   * that the fallback that last got through comes right after WebSocket
   * (WebSocket is tried again at every reconnect: the network may have
   * changed; when it has not, the fallback that worked is next).
   */
  _transportOrder() {
    const order = [...this.transports];
    const worked = this._fellBackTo;
    if (worked && order[0] === "websocket" && order.includes(worked)) {
      order.splice(order.indexOf(worked), 1);
      order.splice(1, 0, worked);
    }
    return order;
  }

  /**
   * Opens transport `attempt.order[i]` to `attempt.url`; when it fails
   * before its welcome (or brings none within `fallbackDelayMs`, unless it
   * is the last), the next one. When none got through, the attempt has
   * failed: backoff, and the next URL.
   */
  _tryTransport(attempt, i) {
    const { url, order, failures, generation } = attempt;
    if (generation !== this._generation || !this._wanted) return;
    if (i >= order.length) {
      const reason = failures.map((f) => `${f.transport}: ${f.reason}`).join("; ");
      if (failures.every((f) => f.error)) {
        // No transport can even be tried here: retrying will not help.
        const e = failures.length === 1 ? failures[0].error : new ShardcastError("no_transport", `no transport can be used here (${reason})`);
        this.emit("error", e);
        this._dropped(1006, String(e.message), false);
      } else {
        this._dropped(1006, reason, true);
      }
      return;
    }
    const transport = order[i];
    const next = (reason, error) => {
      failures.push({ transport, reason, error });
      this._tryTransport(attempt, i + 1);
    };
    let conn;
    try {
      conn = this._connection(transport, attempt);
    } catch (e) {
      next(String(e?.message ?? e), e instanceof ShardcastError ? e : new ShardcastError("no_transport", String(e?.message ?? e)));
      return;
    }
    this._conn = conn;
    const openedAt = Date.now();
    let welcomed = false;
    let timer;
    const stopTimer = () => {
      clearTimeout(timer);
      this._timers.delete(timer);
    };
    if (i < order.length - 1) {
      const ms = this.options.fallbackDelayMs;
      timer = setTimeout(() => {
        this._timers.delete(timer);
        if (this._conn !== conn || welcomed) return;
        this._conn = undefined;
        conn.close(1000);
        next(`no welcome within ${ms} ms`);
      }, ms);
      this._timers.add(timer);
    }
    // A WebSocket that opened has got through (frames are not buffered on
    // the way): its welcome may take its time (a connect hook, the server's
    // connect_wait_ms). A fallback proves itself with its welcome only: a
    // buffering proxy passes the response's head but holds its body.
    conn.onopen = () => {
      if (this._conn === conn && transport === "websocket") stopTimer();
    };
    conn.onframe = (msg) => {
      if (this._conn !== conn) return;
      if (msg.type === "welcome" && !welcomed) {
        welcomed = true;
        stopTimer();
        if (transport !== "websocket") this._fellBackTo = transport;
      }
      this._onFrame(msg);
    };
    conn.onend = (code, reason, through) => {
      if (this._conn !== conn) return;
      stopTimer();
      this._conn = undefined;
      // Refused, unreachable, broken by a proxy: the next transport. A close
      // the server chose (a refused token, too many connections) is an
      // answer: every transport would get the same.
      if (!welcomed && !through) return next(reason || `closed (${code}) before the welcome`);
      if (Date.now() - openedAt >= STABLE_MS && this.state === "connected") this._attempt = 0;
      this._onClose(code, reason);
    };
  }

  /** A new connection over `transport` (throws when it cannot be used here). */
  _connection(transport, { url, WS, noWebSocket }) {
    const token = this._token;
    const connectData = this.options.connectData;
    if (transport === "websocket") {
      if (!WS) throw noWebSocket ?? new ShardcastError("no_websocket", "no WebSocket class");
      return webSocketConnection({ WebSocket: WS, url, token, codec: this._codec, connectData });
    }
    const fetch = this.options.fetch ?? (typeof globalThis.fetch === "function" ? (...args) => globalThis.fetch(...args) : undefined);
    if (!fetch) throw new ShardcastError("no_transport", `${transport} needs fetch`);
    const paths = this.options.paths;
    const emulationUrl = endpointUrl(url, paths.emulation);
    if (transport === "http_stream") {
      if (!this.options.fetch && typeof globalThis.ReadableStream !== "function") {
        throw new ShardcastError("no_transport", "HTTP-streaming needs fetch with streaming bodies (ReadableStream)");
      }
      return httpStreamConnection({ fetch, streamUrl: endpointUrl(url, paths.http_stream), emulationUrl, token, connectData });
    }
    const ES = this.options.EventSource ?? globalThis.EventSource;
    if (typeof ES !== "function") throw new ShardcastError("no_transport", "SSE needs EventSource");
    return sseConnection({ EventSource: ES, fetch, sseUrl: endpointUrl(url, paths.sse), emulationUrl, token, connectData });
  }

  /** One server frame of the current connection, decoded. */
  _onFrame(msg) {
    switch (msg.type) {
      case "welcome":
        return this._onWelcome(msg);
      case "message": {
        const sub = this._subs.get(msg.topic);
        if (sub && sub.state === "subscribed") sub._deliver(msg.payload, msg.offset, msg.epoch);
        else if (sub && sub.state === "subscribing") (sub._early ??= []).push(msg);
        return;
      }
      case "join":
      case "leave": {
        const sub = this._subs.get(msg.topic);
        if (sub) sub.emit(msg.type, { client: msg.client, user: msg.user });
        return;
      }
      case "direct":
        return this.emit("direct", { from: msg.from, payload: msg.payload });
      case "unsubscribed":
        return this._onUnsubscribed(msg.topic, msg.reason);
      default:
        break;
    }
    if (msg.id !== undefined && this._requests.has(msg.id)) {
      const { resolve, reject, timer } = this._requests.get(msg.id);
      clearTimeout(timer);
      this._requests.delete(msg.id);
      if (msg.type === "error") reject(serverError(msg));
      else resolve(msg);
    } else if (msg.type === "error") {
      this.emit("error", serverError(msg));
    }
  }

  _onWelcome(welcome) {
    this.state = "connected";
    this.info = { client: welcome.client, node: welcome.node, shard: welcome.shard, user: welcome.user, transport: this._conn.transport };
    // The connect hook's data, when it gave some.
    if (welcome.data !== undefined) this.info.data = welcome.data;
    this._scheduleRefresh();
    // What was there before this connection goes first: the subscriptions
    // again, then what was queued while away. Then the event, so that what
    // its handlers subscribe is sent once and what they publish follows the
    // queue.
    for (const sub of this._subs.values()) {
      sub.state = "unsubscribed";
      this._subscribe(sub);
    }
    const pending = this._pending;
    this._pending = [];
    for (const { req, resolve, reject } of pending) this._request(req).then(resolve, reject);
    this.emit("connected", this.info);
  }

  async _subscribe(sub) {
    this._cancelTimers(sub);
    sub.state = "subscribing";
    const conn = this._conn;
    const req = { type: "subscribe", topic: sub.topic };
    if (sub.recover && sub.offset !== undefined && sub.epoch !== undefined) req.recover = { offset: sub.offset, epoch: sub.epoch };
    if (sub._data !== undefined) req.data = sub._data;
    let ack;
    try {
      if (sub._getToken) {
        const token = await sub._getToken(sub.topic);
        // Unsubscribed meanwhile, or on another connection now (whose
        // welcome subscribed it again).
        if (this._subs.get(sub.topic) !== sub || this._conn !== conn || this.state !== "connected") return;
        sub._token = token;
      }
      if (sub._token !== undefined) req.token = sub._token;
      ack = await this._request(req);
    } catch (e) {
      if (this._subs.get(sub.topic) !== sub) return;
      // A dropped connection resubscribes by itself, after its welcome.
      if (e.code === "disconnected") {
        sub._early = undefined;
        sub.state = "unsubscribed";
        return;
      }
      // getToken failed after the connection changed: the new one subscribes again.
      if (this._conn !== conn || this.state !== "connected") return;
      sub._early = undefined;
      // Retried before the event, so that the handler sees the state it
      // will be in (and may still unsubscribe).
      if (PERMANENT_REFUSALS.has(e.code)) sub.state = "unsubscribed";
      else this._retrySubscribe(sub);
      sub.emit("error", e);
      return;
    }
    if (this._subs.get(sub.topic) !== sub) return;
    sub._attempt = 0;
    const recovered = Boolean(ack.recovered);
    if (req.recover && !recovered) {
      // History lost or trimmed: the application must reload its state.
      sub.offset = ack.offset;
      sub.epoch = ack.epoch;
    } else if (!req.recover && ack.epoch !== undefined) {
      sub.offset = ack.offset;
      sub.epoch = ack.epoch;
    }
    sub.ackData = ack.data;
    sub.state = "subscribed";
    this._scheduleRenew(sub);
    sub.emit("subscribed", { recovered, offset: ack.offset, epoch: ack.epoch, data: ack.data });
    if (recovered) for (const p of ack.publications ?? []) sub._deliver(p.payload, p.offset, ack.epoch);
    // Messages decoded after the ack but before this continuation ran (the
    // ones that came in the same read as the ack), in order. A conforming
    // server sends none before the ack, so this holds one read's worth.
    for (const m of sub._early ?? []) sub._deliver(m.payload, m.offset, m.epoch);
    sub._early = undefined;
  }

  /**
   * Subscribes `sub` again after a refusal that may heal, on the same
   * connection, after the connection's backoff delay for the subscription's
   * own attempt count. It stays "subscribing" meanwhile.
   */
  _retrySubscribe(sub) {
    const conn = this._conn;
    const delay = backoffDelay(sub._attempt++, this.options.reconnect);
    sub._retry = setTimeout(() => {
      sub._retry = undefined;
      // Unsubscribed, or a newer connection (its welcome resubscribed it).
      if (this._subs.get(sub.topic) !== sub || this._conn !== conn || this.state !== "connected") return;
      this._subscribe(sub);
    }, delay);
  }

  /**
   * Renews `sub`, subscribed with a token from its `getToken`, before that
   * token's `exp`: a subscribe with a fresh token on the same connection
   * (the server replaces the expiry; delivery goes on meanwhile). A failed
   * renewal is reported as the subscription's `error`; the subscription then
   * ends at the old `exp` (`unsubscribed`).
   */
  _scheduleRenew(sub) {
    clearTimeout(sub._renew);
    sub._renew = undefined;
    if (!sub._getToken || sub._token === undefined) return;
    const exp = tokenExpiry(sub._token);
    if (exp === undefined) return;
    const conn = this._conn;
    const current = () => this._subs.get(sub.topic) === sub && this._conn === conn && this.state === "connected";
    sub._renew = setTimeout(async () => {
      sub._renew = undefined;
      if (!current()) return;
      try {
        const token = await sub._getToken(sub.topic);
        if (!current()) return;
        await this._request({ type: "subscribe", topic: sub.topic, token });
        if (!current()) {
          // The server ended it (token expired) just before the renewal
          // subscribed it again: nobody wants that subscription.
          if (this._conn === conn && this.state === "connected" && !this._subs.has(sub.topic)) {
            this._request({ type: "unsubscribe", topic: sub.topic }).catch(() => {});
          }
          return;
        }
        sub._token = token;
        this._scheduleRenew(sub);
      } catch (e) {
        if (current()) sub.emit("error", e);
      }
    }, renewDelay(exp));
  }

  /** The server ended a subscription (its token expired): it is gone for good. */
  _onUnsubscribed(topic, reason) {
    const sub = this._subs.get(topic);
    if (sub) {
      this._subs.delete(topic);
      this._cancelTimers(sub);
      sub._early = undefined;
      sub.state = "unsubscribed";
      sub.emit("unsubscribed", { reason, server: true });
    }
    this.emit("unsubscribed", { topic, reason });
  }

  _cancelTimers(sub) {
    clearTimeout(sub._retry);
    sub._retry = undefined;
    clearTimeout(sub._renew);
    sub._renew = undefined;
  }

  _unsubscribe(sub) {
    if (this._subs.get(sub.topic) !== sub) return;
    this._subs.delete(sub.topic);
    this._cancelTimers(sub);
    const was = sub.state;
    sub.state = "unsubscribed";
    if (this.state === "connected" && was !== "unsubscribed") this._request({ type: "unsubscribe", topic: sub.topic }).catch(() => {});
    sub.emit("unsubscribed", { reason: "unsubscribe", server: false });
  }

  _scheduleRefresh() {
    if (!this.options.getToken || !this._token) return;
    const exp = tokenExpiry(this._token);
    if (exp === undefined) return;
    const conn = this._conn;
    this._later(renewDelay(exp), async () => {
      if (this._conn !== conn || this.state !== "connected") return;
      try {
        const token = await this.options.getToken();
        await this._request({ type: "refresh", token });
        this._token = token;
        this._scheduleRefresh();
      } catch (e) {
        this.emit("error", e);
      }
    });
  }

  _onClose(code, reason) {
    const tokenProblem = TOKEN_CLOSES.has(code);
    let reconnect = this._wanted && !FINAL_CLOSES.has(code) && !(tokenProblem && !this.options.getToken);
    if (tokenProblem && !this.options.getToken) reason ||= "the token was refused and there is no getToken to ask for another";
    this._dropped(code, reason, reconnect);
  }

  _dropped(code, reason, reconnect) {
    const was = this.state;
    this.state = "disconnected";
    this.info = undefined;
    for (const { reject, timer } of this._requests.values()) {
      clearTimeout(timer);
      reject(new ShardcastError("disconnected", `connection closed (${code})`));
    }
    this._requests.clear();
    for (const sub of this._subs.values()) {
      this._cancelTimers(sub);
      sub.state = "unsubscribed";
    }
    if (!reconnect && this._stopped === undefined) {
      this._stop(`connection closed (${code}${reason ? ": " + reason : ""}), not reconnecting`);
    }
    // Once per lost connection, when the server refused an attempt (4xxx),
    // and when giving up; not for every attempt that found nobody listening.
    if (was === "connected" || !reconnect || code >= 4000) this.emit("disconnected", { code, reason, reconnect });
    if (reconnect) {
      // The node that failed us may be gone for good: the next one, with the
      // same backoff. Subscriptions recover there too, as the nodes of one
      // Redis share the history (one epoch and offset per topic).
      this._urlIndex = (this._urlIndex + 1) % this.urls.length;
      const delay = backoffDelay(this._attempt++, this.options.reconnect);
      this._later(delay, () => this._open());
    }
  }

  /** Stops for good (until `connect()`): queued and later publishes reject with `message`. */
  _stop(message) {
    this._wanted = false;
    this._stopped = message;
    this._failPending(new ShardcastError("disconnected", message));
  }

  _failPending(err) {
    const pending = this._pending;
    this._pending = [];
    for (const { reject } of pending) reject(err);
  }
}

export default Shardcast;
