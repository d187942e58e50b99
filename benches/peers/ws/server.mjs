// The Node.js peer for `shardcast-bench compare`: the pub/sub server most
// teams would write first on Node's `ws` library. It speaks the subset of
// shardcast's JSON protocol v1 the benches use (docs/protocol.md):
// welcome, subscribe / unsubscribe / publish / ping with acks, message
// frames, and an `/echo` endpoint.
//
// One Map of topic -> Set of sockets; each publish is serialised once and
// handed to every subscriber's `send` (ws frames and writes it per socket).
// A subscriber with more than MAX_BUFFERED bytes not yet written loses the
// message, like the tokio baseline's full queue.
//
//   node server.mjs [--listen 127.0.0.1:0]     prints `listening on ws://IP:PORT`
import { WebSocketServer } from 'ws';

const MAX_BUFFERED = 1 << 20;
const MAX_PAYLOAD = 1 << 20;

let listen = '127.0.0.1:0';
for (let i = 2; i < process.argv.length; i++) {
  if (process.argv[i] === '--listen' && i + 1 < process.argv.length) {
    listen = process.argv[++i];
  } else {
    console.error(`server.mjs: unknown argument ${process.argv[i]}`);
    process.exit(2);
  }
}
const cut = listen.lastIndexOf(':');
const host = listen.slice(0, cut);
const port = Number(listen.slice(cut + 1));

const topics = new Map();
let nextId = 0;

const wss = new WebSocketServer({ host, port, perMessageDeflate: false, maxPayload: MAX_PAYLOAD, clientTracking: false });

wss.on('listening', () => {
  const a = wss.address();
  console.log(`listening on ws://${a.address}:${a.port}`);
});

wss.on('connection', (ws, req) => {
  const path = (req.url || '/').split('?')[0];
  if (path === '/echo') {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    return;
  }
  if (path !== '/ws') {
    ws.close(1008, 'unknown path');
    return;
  }
  const id = nextId++;
  const mine = new Set();
  ws.send(`{"type":"welcome","client":"${id}","node":"node-ws","shard":0}`);
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    let req;
    try {
      req = JSON.parse(data.toString());
    } catch {
      ws.send('{"type":"error","code":"bad_json","message":"bad json"}');
      return;
    }
    const topic = typeof req.topic === 'string' ? req.topic : null;
    switch (req.type) {
      case 'subscribe':
        if (topic === null) return;
        if (!topics.has(topic)) topics.set(topic, new Set());
        topics.get(topic).add(ws);
        mine.add(topic);
        break;
      case 'unsubscribe':
        if (topic === null) return;
        topics.get(topic)?.delete(ws);
        mine.delete(topic);
        break;
      case 'publish': {
        if (topic === null) return;
        const subs = topics.get(topic);
        if (subs) {
          const out = `{"type":"message","topic":${JSON.stringify(topic)},"payload":${JSON.stringify(req.payload ?? null)}}`;
          for (const sub of subs) {
            if (sub.bufferedAmount <= MAX_BUFFERED) sub.send(out);
          }
        }
        break;
      }
      case 'ping':
        ws.send('{"type":"pong"}');
        break;
      default:
        return;
    }
    if (Number.isInteger(req.id)) ws.send(`{"type":"ack","id":${req.id}}`);
  });
  ws.on('close', () => {
    for (const topic of mine) {
      const subs = topics.get(topic);
      subs?.delete(ws);
      if (subs?.size === 0) topics.delete(topic);
    }
  });
  ws.on('error', () => {});
});

process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
