// The two encodings of the shardcast protocol (docs/protocol.md): JSON text
// frames, and FlatBuffers binary frames (schemas/client.fbs, code generated
// into src/fb/ by `npm run gen`). Both turn requests (plain objects shaped
// like the JSON requests) into frames and frames into plain objects shaped
// like the JSON replies, so the client above them is the same for both.

const utf8 = new TextEncoder();
const text = new TextDecoder();

/** `shardcast.json.v1`: no dependency. */
export const jsonCodec = {
  subprotocol: "shardcast.json.v1",
  binary: false,
  /** @param {object} req */
  encode(req) {
    return JSON.stringify(req);
  },
  /** @param {string|ArrayBuffer|Uint8Array} data */
  decode(data) {
    const msg = JSON.parse(typeof data === "string" ? data : text.decode(data));
    if (msg.payload === undefined && typeof msg.payload_base64 === "string") msg.payload = fromBase64(msg.payload_base64);
    for (const p of msg.publications ?? []) {
      if (p.payload === undefined && typeof p.payload_base64 === "string") p.payload = fromBase64(p.payload_base64);
    }
    return msg;
  },
};

function fromBase64(b64) {
  const bin = typeof atob === "function" ? atob(b64) : Buffer.from(b64, "base64").toString("binary");
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

/** A payload as bytes: a Uint8Array as is, anything else as its JSON text. */
function payloadBytes(payload) {
  return payload instanceof Uint8Array ? payload : utf8.encode(JSON.stringify(payload === undefined ? null : payload));
}

/** Bytes back to a payload: the JSON value they hold, else the bytes. */
function payloadValue(bytes) {
  try {
    return JSON.parse(text.decode(bytes));
  } catch {
    return bytes;
  }
}

const num = (v) => (v === null || v === undefined ? undefined : Number(v));

/**
 * `shardcast.flatbuffers.v1`: needs the `flatbuffers` package (an optional
 * peer dependency), loaded only when this protocol is asked for.
 */
export async function flatbuffersCodec() {
  const fb = await import("flatbuffers");
  const s = await import("./fb/shardcast/client.js");
  const { Builder, ByteBuffer } = fb;
  const R = s.Request;
  const E = s.Event;

  function position(b, p) {
    const epoch = b.createString(p.epoch);
    return s.StreamPosition.createStreamPosition(b, BigInt(p.offset), epoch);
  }

  /** Builds the request union member; returns [type, offset]. */
  function request(b, req) {
    const str = (v) => b.createString(v);
    switch (req.type) {
      case "subscribe": {
        const topic = str(req.topic);
        const recover = req.recover ? position(b, req.recover) : 0;
        const token = req.token !== undefined ? str(req.token) : 0;
        const data = req.data !== undefined ? s.Subscribe.createDataVector(b, payloadBytes(req.data)) : 0;
        s.Subscribe.startSubscribe(b);
        s.Subscribe.addTopic(b, topic);
        if (recover) s.Subscribe.addRecover(b, recover);
        if (token) s.Subscribe.addToken(b, token);
        if (data) s.Subscribe.addData(b, data);
        return [R.Subscribe, s.Subscribe.endSubscribe(b)];
      }
      case "unsubscribe":
        return [R.Unsubscribe, s.Unsubscribe.createUnsubscribe(b, str(req.topic))];
      case "publish": {
        const topic = str(req.topic);
        const payload = s.Publish.createPayloadVector(b, payloadBytes(req.payload));
        return [R.Publish, s.Publish.createPublish(b, topic, payload, Boolean(req.skip_self))];
      }
      case "ping":
        s.Ping.startPing(b);
        return [R.Ping, s.Ping.endPing(b)];
      case "auth":
        return [R.Auth, s.Auth.createAuth(b, str(req.token))];
      case "refresh":
        return [R.Refresh, s.Refresh.createRefresh(b, str(req.token))];
      case "send": {
        const user = str(req.user);
        const payload = s.Send.createPayloadVector(b, payloadBytes(req.payload));
        return [R.Send, s.Send.createSend(b, user, payload)];
      }
      case "presence":
        return [R.Presence, s.Presence.createPresence(b, str(req.topic))];
      case "presence_stats":
        return [R.PresenceStats, s.PresenceStats.createPresenceStats(b, str(req.topic))];
      case "history": {
        const topic = str(req.topic);
        const since = req.since ? position(b, req.since) : 0;
        s.History.startHistory(b);
        s.History.addTopic(b, topic);
        if (since) s.History.addSince(b, since);
        if (req.limit !== undefined) s.History.addLimit(b, BigInt(req.limit));
        return [R.History, s.History.endHistory(b)];
      }
      case "connect": {
        const data = req.data !== undefined ? s.Connect.createDataVector(b, payloadBytes(req.data)) : 0;
        s.Connect.startConnect(b);
        if (data) s.Connect.addData(b, data);
        return [R.Connect, s.Connect.endConnect(b)];
      }
      case "rpc": {
        const method = str(req.method);
        const data = req.data !== undefined ? s.Rpc.createDataVector(b, payloadBytes(req.data)) : 0;
        s.Rpc.startRpc(b);
        s.Rpc.addMethod(b, method);
        if (data) s.Rpc.addData(b, data);
        return [R.Rpc, s.Rpc.endRpc(b)];
      }
      default:
        throw new Error(`no FlatBuffers form for request ${req.type}`);
    }
  }

  function publications(table) {
    const out = [];
    for (let i = 0; i < table.publicationsLength(); i++) {
      const p = table.publications(i);
      out.push({ offset: Number(p.offset()), payload: payloadValue(p.payloadArray() ?? new Uint8Array()) });
    }
    return out;
  }

  return {
    subprotocol: "shardcast.flatbuffers.v1",
    binary: true,
    encode(req) {
      const b = new Builder(256);
      const [type, offset] = request(b, req);
      s.ClientFrame.startClientFrame(b);
      if (req.id !== undefined) s.ClientFrame.addId(b, BigInt(req.id));
      s.ClientFrame.addRequestType(b, type);
      s.ClientFrame.addRequest(b, offset);
      b.finish(s.ClientFrame.endClientFrame(b));
      return b.asUint8Array();
    },
    decode(data) {
      const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
      const frame = s.ServerFrame.getRootAsServerFrame(new ByteBuffer(bytes));
      const id = num(frame.id());
      switch (frame.eventType()) {
        case E.Welcome: {
          const w = frame.event(new s.Welcome());
          const msg = { type: "welcome", client: w.client(), node: w.node(), shard: w.shard(), user: w.user() ?? null };
          const data = w.dataArray();
          if (data) msg.data = payloadValue(data);
          return msg;
        }
        case E.Ack: {
          const a = frame.event(new s.Ack());
          const msg = { type: "ack", id, offset: num(a.offset()), epoch: a.epoch() ?? undefined };
          if (a.recovered() !== null) {
            msg.recovered = a.recovered();
            msg.publications = publications(a);
          }
          const data = a.dataArray();
          if (data) msg.data = payloadValue(data);
          return msg;
        }
        case E.Pong:
          return { type: "pong", id };
        case E.Message: {
          const m = frame.event(new s.Message());
          return { type: "message", topic: m.topic(), payload: payloadValue(m.payloadArray() ?? new Uint8Array()), offset: num(m.offset()), epoch: m.epoch() ?? undefined };
        }
        case E.Direct: {
          const d = frame.event(new s.Direct());
          return { type: "direct", from: d.from() ?? null, payload: payloadValue(d.payloadArray() ?? new Uint8Array()) };
        }
        case E.Error: {
          const e = frame.event(new s.Error());
          const msg = { type: "error", id, code: e.code(), message: e.message() };
          if (e.backendCode() !== null) msg.backend_code = e.backendCode();
          return msg;
        }
        case E.Join:
        case E.Leave: {
          const j = frame.event(frame.eventType() === E.Join ? new s.Join() : new s.Leave());
          return { type: frame.eventType() === E.Join ? "join" : "leave", topic: j.topic(), client: j.client(), user: j.user() ?? null };
        }
        case E.PresenceResult: {
          const p = frame.event(new s.PresenceResult());
          const clients = {};
          for (let i = 0; i < p.clientsLength(); i++) {
            const c = p.clients(i);
            clients[c.client()] = { user: c.user() ?? null };
            // The connect hook's info, JSON text, when the connection has one.
            const info = c.infoArray();
            if (info) clients[c.client()].info = JSON.parse(text.decode(info));
          }
          return { type: "presence", id, clients };
        }
        case E.PresenceStatsResult: {
          const p = frame.event(new s.PresenceStatsResult());
          return { type: "presence_stats", id, clients: Number(p.clients()), users: Number(p.users()) };
        }
        case E.HistoryResult: {
          const h = frame.event(new s.HistoryResult());
          return { type: "history", id, publications: publications(h), offset: Number(h.offset()), epoch: h.epoch() };
        }
        case E.Unsubscribed: {
          const u = frame.event(new s.Unsubscribed());
          return { type: "unsubscribed", topic: u.topic(), reason: u.reason() ?? "" };
        }
        case E.RpcResult: {
          // No data: `null`, as JSON's rpc_result says it.
          const data = frame.event(new s.RpcResult()).dataArray();
          return { type: "rpc_result", id, data: data ? payloadValue(data) : null };
        }
        default:
          return { type: "unknown" };
      }
    },
  };
}
