// The three ways a shardcast session can travel (docs/protocol.md,
// "Fallback transports"): a WebSocket, and where WebSocket cannot get
// through, an HTTP-streaming response (`POST /stream`, NDJSON) or a
// Server-Sent Events one (`GET /sse`), the client's requests then going in
// `POST /emulation` batches. Each is a connection with the same small shape,
// so that the client above it does not care which one it has:
//
//   send(req)    one request (a plain object, with its id)
//   close(code)  the client ends it; no callback follows
//   drop()       as if the network dropped it (tests): `onend(1006)` follows
//   onopen()     a WebSocket opened (the upgrade went through)
//   onframe(msg) each server frame, decoded
//   onend(code, reason, through)
//                the connection is over; `through` says whether the server
//                was reached and ended it on purpose (a close frame), as
//                opposed to a transport that failed (refused, broken,
//                unreachable): only a failure before the welcome makes the
//                client try the next transport.
//
// No dependency: `fetch` with streaming bodies and `EventSource`, the
// browser's own (or those given in the client's options).

import { jsonCodec } from "./codec.js";

/** The transports, in the order tried by default. */
export const TRANSPORTS = ["websocket", "http_stream", "sse"];

/**
 * The default paths of the fallback endpoints, relative to the WebSocket
 * URL's path (its last segment replaced: `/ws` → `/stream`, `/rt/ws` →
 * `/rt/stream`), as the server's defaults are `/ws`, `/stream`, `/sse` and
 * `/emulation` side by side.
 */
export const DEFAULT_PATHS = { http_stream: "stream", sse: "sse", emulation: "emulation" };

/**
 * An emulation POST stays under this many bytes of requests (the server's
 * default `[limits] max_emulation_body_bytes` is 65536); a single request
 * larger than that still goes, alone.
 */
const MAX_BATCH_BYTES = 32 * 1024;
/**
 * An emulation POST holds at most this many requests to begin with (the
 * server's default `[limits] max_emulation_pending` is 256, and it refuses,
 * 429, a batch that would take a session over it). A 429 for a batch of
 * several halves it for the rest of the session, so that a server with a
 * smaller bound still takes them.
 */
const MAX_BATCH_REQUESTS = 64;

/**
 * The HTTP URL of a fallback endpoint for the WebSocket URL `wsUrl`:
 * `ws:` becomes `http:`, `wss:` `https:`; `path` replaces the URL's path
 * when it starts with `/`, else its last segment. Query and fragment go.
 */
export function endpointUrl(wsUrl, path) {
  const u = new URL(wsUrl);
  if (u.protocol === "ws:") u.protocol = "http:";
  else if (u.protocol === "wss:") u.protocol = "https:";
  u.search = "";
  u.hash = "";
  u.pathname = path.startsWith("/") ? path : u.pathname.replace(/[^/]*$/, "") + path;
  return u.toString();
}

/** `url` with `?name=value` (or `&name=value`) added. */
function withParam(url, name, value) {
  return url + (url.includes("?") ? "&" : "?") + name + "=" + encodeURIComponent(value);
}

/** The connect request of a fallback session: its token and connect data. */
function connectRequest(token, connectData) {
  const req = { type: "connect" };
  if (token) req.token = token;
  if (connectData !== undefined) req.data = connectData;
  return req;
}

/** A frame from the text of one NDJSON line or SSE event; undefined if not JSON. */
function decodeText(text) {
  try {
    return jsonCodec.decode(text);
  } catch {
    return undefined;
  }
}

/**
 * A WebSocket connection. It got through once it opened and the server
 * closed it with a code of its own (not 1006, which is what a proxy that
 * breaks the connection, or a refused upgrade, looks like).
 */
export function webSocketConnection({ WebSocket: WS, url, token, codec, connectData }) {
  if (token) url = withParam(url, "token", token);
  const ws = new WS(url, codec.subprotocol);
  ws.binaryType = "arraybuffer";
  let opened = false;
  let ended = false;
  const conn = {
    transport: "websocket",
    ws,
    onopen: () => {},
    onframe: () => {},
    onend: () => {},
    send(req) {
      ws.send(codec.encode(req));
    },
    close(code) {
      ended = true;
      ws.close(code);
    },
    drop() {
      if (ws.terminate) ws.terminate();
      else ws.close();
    },
  };
  ws.onmessage = (ev) => {
    if (ended) return;
    let msg;
    try {
      msg = codec.decode(ev.data);
    } catch {
      return;
    }
    conn.onframe(msg);
  };
  // The connect hook's data goes first, before anything else on the
  // connection (the server waits `[proxy] connect_wait_ms` for it).
  ws.onopen = () => {
    opened = true;
    if (ended) return;
    conn.onopen();
    if (connectData === undefined) return;
    ws.send(codec.encode({ type: "connect", data: connectData }));
  };
  ws.onclose = (ev) => {
    if (ended) return;
    ended = true;
    const code = ev.code ?? 1006;
    conn.onend(code, ev.reason ?? "", opened && code !== 1006);
  };
  ws.onerror = () => {};
  return conn;
}

/**
 * What a fallback session shares between HTTP-streaming and SSE: the
 * end of the session (once), and the client's requests in `POST
 * <emulation>` batches, one POST in flight at a time so that they arrive in
 * order, the next one once the previous was answered.
 */
function fallbackSession(transport, { fetch, emulationUrl }) {
  /** Requests not yet posted, in order. */
  let queue = [];
  let posting = false;
  /** After a 413 for a batch: one request per POST from then on. */
  let singles = false;
  /** The most requests in one POST (halved by a 429 for a batch of several). */
  let maxRequests = MAX_BATCH_REQUESTS;
  let ended = false;
  let retryTimer;
  const conn = {
    transport,
    /** The welcome's `session`: where the emulation POSTs go. */
    session: undefined,
    onframe: () => {},
    onend: () => {},
    send(req) {
      queue.push(req);
      flush();
    },
    /** Called by the transport for each server frame's text. */
    frame(text) {
      if (ended) return;
      const msg = decodeText(text);
      if (msg === undefined) return;
      if (msg.type === "close") {
        end(typeof msg.code === "number" ? msg.code : 1006, msg.reason ?? "", true);
        return;
      }
      if (msg.type === "welcome" && typeof msg.session === "string" && conn.session === undefined) {
        conn.session = msg.session;
        // Nothing is sent before the welcome, but be sure.
        queueMicrotask(flush);
      }
      conn.onframe(msg);
    },
    /** The transport is over (`through`: the server ended it with a close frame). */
    end,
    get ended() {
      return ended;
    },
    /** Set by the transport: stops its stream. */
    abort: () => {},
    close() {
      ended = true;
      clearTimeout(retryTimer);
      conn.abort();
    },
    drop() {
      conn.abort();
      end(1006, "dropped", false);
    },
  };

  function end(code, reason, through) {
    if (ended) return;
    ended = true;
    clearTimeout(retryTimer);
    conn.abort();
    conn.onend(code, reason, through);
  }

  /** The server's answer to requests that did not reach the session, as if it had sent error frames. */
  function refuse(batch, code, message) {
    for (const req of batch) {
      if (req.id !== undefined) conn.onframe({ type: "error", id: req.id, code, message });
    }
  }

  function takeBatch() {
    let n = 0;
    let bytes = 0;
    while (n < queue.length) {
      const size = JSON.stringify(queue[n]).length;
      if (n > 0 && (singles || n >= maxRequests || bytes + size > MAX_BATCH_BYTES)) break;
      bytes += size;
      n++;
    }
    const batch = queue.slice(0, n);
    queue = queue.slice(n);
    return batch;
  }

  async function flush() {
    if (posting || ended || conn.session === undefined || queue.length === 0) return;
    posting = true;
    const batch = takeBatch();
    let res;
    try {
      res = await fetch(emulationUrl, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ session: conn.session, requests: batch }),
        credentials: "include",
        cache: "no-store",
      });
      // The answers carry no body worth reading; free the connection.
      await res.arrayBuffer().catch(() => {});
    } catch {
      // The network failed under the POST: whether the requests arrived is
      // unknown, as for a WebSocket that drops; the session goes the same way.
      posting = false;
      end(1006, "emulation request failed", false);
      return;
    }
    posting = false;
    if (ended) return;
    switch (res.status) {
      case 200:
      case 202:
      case 204:
        break;
      case 429: {
        // The session holds too many requests it has not run yet: these
        // were not taken; they go again first, after the server's delay (in
        // smaller POSTs: a batch over the server's bound is never taken).
        queue = batch.concat(queue);
        if (batch.length > 1) maxRequests = Math.max(1, Math.floor(batch.length / 2));
        const after = Number(res.headers.get("retry-after"));
        posting = true;
        retryTimer = setTimeout(() => {
          posting = false;
          flush();
        }, Number.isFinite(after) && after > 0 ? after * 1000 : 1000);
        return;
      }
      case 404:
        // The session is gone (closed, or its node restarted): reconnect.
        end(1006, "session not found", false);
        return;
      case 413:
        if (batch.length > 1) {
          singles = true;
          queue = batch.concat(queue);
        } else {
          refuse(batch, "message_too_large", "the request is larger than the server's max_emulation_body_bytes");
        }
        break;
      case 400:
      case 411:
        refuse(batch, "bad_request", `the server refused the emulation request (${res.status})`);
        break;
      default:
        end(1006, `emulation request answered ${res.status}`, false);
        return;
    }
    flush();
  }

  return conn;
}

/**
 * An HTTP-streaming session: `POST <stream>` whose body is the connect
 * request, answered by NDJSON frames, one per line (an empty line is a
 * heartbeat). Needs `fetch` with streaming response bodies.
 */
export function httpStreamConnection({ fetch, streamUrl, emulationUrl, token, connectData }) {
  const conn = fallbackSession("http_stream", { fetch, emulationUrl });
  const ctrl = new AbortController();
  conn.abort = () => ctrl.abort();
  (async () => {
    let res;
    try {
      res = await fetch(streamUrl, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(connectRequest(token, connectData)) + "\n",
        signal: ctrl.signal,
        credentials: "include",
        cache: "no-store",
      });
    } catch (e) {
      conn.end(1006, `${streamUrl}: ${e?.message ?? e}`, false);
      return;
    }
    if (res.status !== 200 || !res.body || typeof res.body.getReader !== "function") {
      res.body?.cancel?.().catch(() => {});
      conn.end(1006, `${streamUrl} answered ${res.status}${res.body ? "" : " without a streaming body"}`, false);
      return;
    }
    const reader = res.body.getReader();
    const text = new TextDecoder();
    let buf = "";
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        buf += text.decode(value, { stream: true });
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (line !== "") conn.frame(line);
          if (conn.ended) return;
        }
      }
    } catch {
      // Aborted by the client, or the network dropped it.
    }
    conn.end(1006, "the stream ended without a close frame", false);
  })();
  return conn;
}

/**
 * An SSE session: `GET <sse>?token=…&connect=…`, one `data:` event per
 * frame. The EventSource's own reconnects are not used: an error ends the
 * session, and the client reconnects as it does for every transport (a new
 * session, resubscribing and recovering).
 */
export function sseConnection({ EventSource: ES, fetch, sseUrl, emulationUrl, token, connectData }) {
  const conn = fallbackSession("sse", { fetch, emulationUrl });
  let url = sseUrl;
  if (token) url = withParam(url, "token", token);
  if (connectData !== undefined) url = withParam(url, "connect", JSON.stringify(connectRequest(undefined, connectData)));
  const es = new ES(url, { withCredentials: true });
  conn.abort = () => es.close();
  conn.eventSource = es;
  es.onmessage = (ev) => conn.frame(ev.data);
  es.onerror = () => conn.end(1006, `${sseUrl}: the event stream failed or ended without a close frame`, false);
  return conn;
}
