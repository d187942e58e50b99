// Backend hooks and subscription tokens (docs/protocol.md, "Backend hooks"
// and "Subscription tokens"), in both encodings: the real binary with a
// `[proxy]` config calling an HTTP backend written here on `node:http`.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";

import { Shardcast, ShardcastError } from "../src/index.js";
import { Server, SECRET, token, next, until, connectedClient } from "./server.js";

const fast = { minDelayMs: 20, maxDelayMs: 200 };
const PROTOCOLS = ["json", "flatbuffers"];

const running = [];
after(() => Promise.all(running.map((r) => r.kill())));

/**
 * An HTTP backend on 127.0.0.1 that records every call (`calls`: {path,
 * body}) and answers `answer(path, body)` (a JSON body, or a promise of
 * one) with 200.
 */
async function startBackend(answer) {
  const calls = [];
  const http = createServer((req, res) => {
    let text = "";
    req.setEncoding("utf8");
    req.on("data", (chunk) => (text += chunk));
    req.on("end", async () => {
      const body = JSON.parse(text || "null");
      calls.push({ path: req.url, body });
      const reply = JSON.stringify(await answer(req.url, body));
      res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(reply) });
      res.end(reply);
    });
  });
  await new Promise((resolve) => http.listen(0, "127.0.0.1", resolve));
  const backend = {
    calls,
    url: (path) => `http://127.0.0.1:${http.address().port}${path}`,
    kill: () => {
      // The server's hooks client keeps its connections alive.
      http.closeAllConnections();
      return new Promise((resolve) => http.close(resolve));
    },
  };
  running.push(backend);
  return backend;
}

/**
 * The application's side: connect names the user its `data` says (anonymous
 * without) and gives `data` back; subscribe lets `p:open` in with `data`
 * and refuses any other `p:` topic with its own code 403; rpc `echo`
 * answers with `data`, `nothing` without, `slow` after a second, and any
 * other method is an error with code 1404.
 */
function app(path, body) {
  switch (path) {
    case "/connect": {
      const user = body.data?.user ?? "";
      const info = user ? { name: `${user} the user` } : undefined;
      return { result: { user, info, data: { hello: user, got: body.data, encoding: body.encoding } } };
    }
    case "/subscribe":
      if (body.topic === "p:open") return { result: { data: { welcome: body.user, got: body.data } } };
      return { error: { code: 403, message: "members only" } };
    case "/rpc":
      switch (body.method) {
        case "echo":
          return { result: { data: { echo: body.data, user: body.user } } };
        case "nothing":
          return { result: {} };
        case "slow":
          return new Promise((resolve) => setTimeout(() => resolve({ result: { data: "late" } }), 1000));
        default:
          return { error: { code: 1404, message: "no such method" } };
      }
    default:
      return { error: { code: 500, message: `no hook at ${path}` } };
  }
}

/**
 * A node whose connect, subscribe and rpc hooks call `backend`: `p:*` is a
 * `proxy` namespace for subscribes, `room:*` a `token` one. connect_wait_ms
 * is long, so that a connect whose data never came shows (a late welcome,
 * data null) rather than passing by luck; leeway_ms is 0, so that a
 * subscription token ends at its `exp`.
 */
async function hooksServer(backend) {
  const config = `[auth]
hmac_secret = "${SECRET}"
leeway_ms = 0

[[namespaces]]
pattern = "p:*"
subscribe = "proxy"
publish = "anyone"

[[namespaces]]
pattern = "room:*"
subscribe = "token"
publish = "anyone"

[[namespaces]]
pattern = "here:*"
subscribe = "anyone"
publish = "anyone"
presence = true

[limits]
publish_rate = 0

[proxy]
connect_url = "${backend.url("/connect")}"
subscribe_url = "${backend.url("/subscribe")}"
rpc_url = "${backend.url("/rpc")}"
connect_wait_ms = 5000
timeout_ms = 3000
`;
  const s = await Server.start(config);
  running.push(s);
  return s;
}

/** A client of `protocol` that collects its `error` events in `errors`, connected. */
function connected(s, protocol, options = {}) {
  return connectedClient(s.url, { reconnect: fast, protocol, ...options });
}

/** Drops `c`'s connection as a network would (no close frame). */
function dropConnection(c) {
  c._conn.drop();
}

/** A subscription token: `sub` may subscribe to `channel` for `seconds`. */
function subToken(sub, channel, seconds) {
  return token(sub, seconds, SECRET, { channel });
}

const backend = await startBackend(app);
const server = await hooksServer(backend);

for (const protocol of PROTOCOLS) {
  test(`${protocol}: connectData goes to the connect hook first, on every connect; the welcome's data is info.data`, async () => {
    const device = `phone-${protocol}`;
    const connectData = { user: "alice", device };
    const c = new Shardcast(server.url, { reconnect: fast, protocol, connectData });
    const errors = [];
    c.on("error", (e) => errors.push(e));
    // Requests made before the connection wait behind the connect frame.
    const early = c.rpc("echo", "before connect()");
    const up = next(c, "connected");
    const started = Date.now();
    c.connect();
    const welcome = await up;
    // Without the connect frame the server would wait its 5 s for one.
    assert.ok(Date.now() - started < 4000, `welcomed after ${Date.now() - started} ms`);
    assert.equal(welcome.user, "alice");
    assert.deepEqual(welcome.data, { hello: "alice", got: connectData, encoding: protocol });
    assert.deepEqual(c.info.data, welcome.data);
    assert.deepEqual(await early, { echo: "before connect()", user: "alice" });
    const mine = () => backend.calls.filter((x) => x.path === "/connect" && x.body.data?.device === device);
    assert.equal(mine().length, 1);

    // A reconnect sends it again, and the new welcome's data replaces the old.
    const again = next(c, "connected");
    dropConnection(c);
    assert.deepEqual((await again).data, { hello: "alice", got: connectData, encoding: protocol });
    assert.equal(mine().length, 2);
    assert.deepEqual(errors, [], "no error frame (a connect the server did not expect is a bad_request)");
    c.disconnect();

    // connectData null is sent too (data null for the hook): a client
    // without a user to name need not wait out connect_wait_ms.
    const anon = new Shardcast(server.url, { reconnect: fast, protocol, connectData: null });
    const anonUp = next(anon, "connected");
    const anonStarted = Date.now();
    anon.connect();
    const reply = anon.rpc("echo", 7);
    const anonWelcome = await anonUp;
    assert.ok(Date.now() - anonStarted < 4000, `welcomed after ${Date.now() - anonStarted} ms`);
    assert.equal(anonWelcome.user, null);
    assert.deepEqual(anonWelcome.data, { hello: "", got: null, encoding: protocol });
    assert.deepEqual(await reply, { echo: 7 }, "anonymous: no user in the call");
    anon.disconnect();
  });

  test(`${protocol}: presence lists the connect hook's info`, async () => {
    const c = await connected(server, protocol, { connectData: { user: "ivy" } });
    const sub = c.subscribe("here:1");
    await next(sub, "subscribed");
    const clients = await sub.presence();
    assert.deepEqual(clients[c.info.client], { user: "ivy", info: { name: "ivy the user" } });
    c.disconnect();
  });

  test(`${protocol}: rpc resolves with the backend's data and rejects with its code`, async () => {
    const c = await connected(server, protocol, { connectData: { user: "bob" } });
    assert.deepEqual(await c.rpc("echo", { ids: [1, 2] }), { echo: { ids: [1, 2] }, user: "bob" });
    assert.deepEqual(await c.rpc("echo"), { echo: null, user: "bob" }, "no data: the backend gets null");
    assert.equal(await c.rpc("nothing"), null, "no data: null");
    await assert.rejects(c.rpc("nope", 1), (e) => {
      assert.ok(e instanceof ShardcastError);
      assert.equal(e.code, "backend_error");
      assert.equal(e.backendCode, 1404);
      assert.equal(e.message, "no such method");
      return true;
    });
    // Bounded by the client's request timeout.
    const impatient = await connected(server, protocol, { connectData: { user: "bob" }, timeoutMs: 300 });
    await assert.rejects(impatient.rpc("slow"), (e) => e.code === "timeout" && e.backendCode === undefined);
    // A plain server error carries no backendCode.
    await assert.rejects(c.publish("", 1), (e) => e.code === "invalid_topic" && e.backendCode === undefined);
    assert.deepEqual([...c.errors, ...impatient.errors], []);
    c.disconnect();
    impatient.disconnect();
  });

  test(`${protocol}: subscribe data goes to the subscribe hook, on every resubscribe; the ack's data comes back; a refusal has the backend's code`, async () => {
    const c = await connected(server, protocol, { connectData: { user: "carol" } });
    const topic = `p:open`;
    const sub = c.subscribe(topic, { data: { seat: protocol } });
    const ev = await next(sub, "subscribed");
    const want = { welcome: "carol", got: { seat: protocol } };
    assert.deepEqual(ev.data, want);
    assert.deepEqual(sub.ackData, want);
    const got = next(sub, "message");
    await c.publish(topic, { n: 1 });
    assert.deepEqual((await got).payload, { n: 1 });

    const closed = c.subscribe("p:closed", { data: "let me in" });
    const refused = await next(closed, "error");
    assert.ok(refused instanceof ShardcastError);
    assert.equal(refused.code, "forbidden");
    assert.equal(refused.backendCode, 403);
    assert.equal(refused.message, "members only");
    assert.equal(closed.state, "unsubscribed", "a backend's refusal is not retried");

    // After a reconnect: subscribed again with the same data.
    const calls = () => backend.calls.filter((x) => x.path === "/subscribe" && x.body.topic === topic && x.body.data?.seat === protocol);
    assert.equal(calls().length, 1);
    const back = next(sub, "subscribed");
    dropConnection(c);
    assert.deepEqual((await back).data, want);
    assert.equal(calls().length, 2);
    assert.equal(calls()[1].body.user, "carol");
    const again = next(sub, "message");
    await c.publish(topic, { n: 2 });
    assert.deepEqual((await again).payload, { n: 2 });
    assert.deepEqual(c.errors, []);
    c.disconnect();
  });
}

// The hooks over the fallback transports (issue 26): connectData travels
// in the connect request (the hook is called at once, no connect_wait_ms),
// and the session speaks JSON whatever the protocol option says.
const hasEventSource = typeof globalThis.EventSource === "function";
for (const transport of ["http_stream", "sse"]) {
  const skip = transport === "sse" && !hasEventSource ? "no global EventSource: run node with --experimental-eventsource" : false;
  test(`${transport}: connectData goes to the connect hook at once; presence info, subscribe data and rpc work`, { skip }, async () => {
    const connectData = { user: "alice", device: transport };
    const started = Date.now();
    const c = await connected(server, "flatbuffers", { connectData, transports: [transport] });
    assert.ok(Date.now() - started < 4000, `welcomed after ${Date.now() - started} ms`);
    assert.equal(c.transport, transport);
    assert.equal(c.info.user, "alice");
    assert.deepEqual(c.info.data, { hello: "alice", got: connectData, encoding: "json" }, "a JSON session");
    assert.deepEqual(await c.rpc("echo", 5), { echo: 5, user: "alice" });
    await assert.rejects(c.rpc("nope"), (e) => e.code === "backend_error" && e.backendCode === 1404);
    const sub = c.subscribe("p:open", { data: { seat: 3 } });
    assert.deepEqual((await next(sub, "subscribed")).data, { welcome: "alice", got: { seat: 3 } });
    const refused = c.subscribe("p:closed");
    const e = await next(refused, "error");
    assert.equal(e.code, "forbidden");
    assert.equal(e.backendCode, 403);
    const here = c.subscribe("here:fallback");
    await next(here, "subscribed");
    assert.deepEqual((await here.presence())[c.info.client], { user: "alice", info: { name: "alice the user" } });
    // A new session calls the hook again, and subscribes with data again.
    const again = next(c, "connected");
    const resubscribed = next(sub, "subscribed");
    dropConnection(c);
    assert.deepEqual((await again).data, { hello: "alice", got: connectData, encoding: "json" });
    assert.deepEqual((await resubscribed).data, { welcome: "alice", got: { seat: 3 } });
    assert.deepEqual(c.errors, []);
    c.disconnect();
  });
}

/**
 * On one client: `room:static`, subscribed with a token expiring in
 * `seconds`, ends with `unsubscribed` and stays gone across a reconnect;
 * `room:fresh`, whose getToken gives tokens of the same life, is renewed
 * before each expires and resubscribed with a fresh one after a reconnect.
 */
async function subscriptionTokens(protocol) {
  const user = `dave-${protocol}`;
  const c = await connected(server, protocol, { connectData: { user } });
  const publisher = await connected(server, protocol);
  const seconds = 3;

  const fixed = c.subscribe("room:static", { token: subToken(user, "room:static", seconds) });
  const fixedEnds = [];
  fixed.on("unsubscribed", (e) => fixedEnds.push(e));
  const clientEnds = [];
  c.on("unsubscribed", (e) => clientEnds.push(e));
  const asked = [];
  const fresh = c.subscribe("room:fresh", {
    getToken: async (topic) => {
      asked.push(topic);
      return subToken(user, topic, seconds);
    },
  });
  const freshMessages = [];
  fresh.on("message", (m) => freshMessages.push(m.payload));
  const freshErrors = [];
  fresh.on("error", (e) => freshErrors.push(e));
  await Promise.all([next(fixed, "subscribed"), next(fresh, "subscribed")]);
  const got = next(fixed, "message");
  await publisher.publish("room:static", "while valid");
  assert.equal((await got).payload, "while valid");

  // The static token's exp passes: the server ends that subscription.
  await until(() => fixedEnds.length === 1, "room:static's unsubscribed", 8000);
  assert.deepEqual(fixedEnds, [{ reason: "token expired", server: true }]);
  assert.deepEqual(clientEnds, [{ topic: "room:static", reason: "token expired" }]);
  assert.equal(fixed.state, "unsubscribed");
  assert.equal(c.getSubscription("room:static"), undefined, "gone from the client");

  // room:fresh outlived several of its tokens.
  await new Promise((resolve) => setTimeout(resolve, 1500));
  assert.equal(fresh.state, "subscribed");
  assert.ok(asked.length >= 2, `getToken asked ${asked.length} times`);
  assert.ok(asked.every((t) => t === "room:fresh"), asked.join());
  await publisher.publish("room:fresh", "renewed");
  await until(() => freshMessages.includes("renewed"), "a message on the renewed subscription");

  // A reconnect: room:fresh is subscribed again with a token asked for
  // then; room:static is not (the connected handler sees the states the
  // welcome left: resubscribes are sent before it runs).
  const before = asked.length;
  const states = next(c, "connected").then(() => [fixed.state, fresh.state]);
  const back = next(fresh, "subscribed");
  dropConnection(c);
  assert.deepEqual(await states, ["unsubscribed", "subscribing"]);
  await back;
  assert.ok(asked.length > before, "a fresh token for the resubscribe");
  assert.equal(c.getSubscription("room:static"), undefined);
  await publisher.publish("room:static", "after the end");
  await publisher.publish("room:fresh", "after the reconnect");
  await until(() => freshMessages.includes("after the reconnect"), "a message after the reconnect");
  assert.deepEqual(fixedEnds.length, 1);
  assert.deepEqual(freshErrors, []);
  assert.deepEqual([...c.errors, ...publisher.errors], []);
  c.disconnect();
  publisher.disconnect();
}

test("subscription tokens: a static one ends with unsubscribed (not resubscribed), getToken renews; both encodings", async () => {
  // The two encodings at once: each waits for tokens to expire.
  await Promise.all(PROTOCOLS.map(subscriptionTokens));
});

test("a subscription token for another user is refused, not retried", async () => {
  const c = await connected(server, "json", { connectData: { user: "erin" } });
  const sub = c.subscribe("room:x", { token: subToken("mallory", "room:x", 60) });
  const e = await next(sub, "error");
  assert.equal(e.code, "forbidden");
  assert.equal(e.backendCode, undefined);
  assert.equal(sub.state, "unsubscribed");
  c.disconnect();
});
