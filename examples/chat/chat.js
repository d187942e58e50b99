// The chat page: rooms, who is here (presence), join/leave lines and direct
// messages, on shardcast-client exactly as a browser loads it (an ES module,
// no bundler). Where WebSocket cannot get through, the client falls back to
// HTTP-streaming, then SSE, on the same server (its /stream, /sse and
// /emulation paths beside /ws). Query parameters: `server` (the WebSocket URL, default this
// host's /ws), `token` (a connection token: in a real app, fetched from the
// app's backend), `room` (default chat:lobby).
import { Shardcast } from "/shardcast-client/index.js";

const params = new URLSearchParams(location.search);
const server = params.get("server") ?? `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
let room = params.get("room") ?? "chat:lobby";
const token = params.get("token") ?? undefined;

const $ = (id) => document.getElementById(id);
$("room").value = room;

/** Appends one line to the log. */
function line(text, kind = "", who = "") {
  const li = document.createElement("li");
  if (kind) li.className = kind;
  if (who) {
    const b = document.createElement("b");
    b.textContent = who;
    li.append(b);
  }
  li.append(text);
  $("log").append(li);
  li.scrollIntoView({ block: "end" });
}

const client = new Shardcast(server, { token, reconnect: { minDelayMs: 200, maxDelayMs: 5000 } });
let sub;
window.chat = { client };

function setState(state) {
  $("state").textContent = state;
  $("state").className = state;
  document.body.dataset.state = state;
}

async function refreshPresence() {
  try {
    const clients = await sub.presence();
    const users = Object.values(clients).map((c) => c.user ?? "guest");
    $("presence").replaceChildren(...users.sort().map((u) => Object.assign(document.createElement("li"), { textContent: u })));
    $("count").textContent = String(users.length);
  } catch (e) {
    line(`presence unavailable: ${e.code ?? e}`, "note");
  }
}

client.on("connecting", () => setState("connecting"));
client.on("connected", (info) => {
  setState("connected");
  // `transport`: "websocket", or the fallback the client fell back to
  // where WebSocket could not get through ("http_stream", "sse").
  $("me").textContent = `as ${info.user ?? "guest"} on ${info.node} over ${info.transport}`;
});
client.on("disconnected", ({ code, reconnect }) => {
  setState("disconnected");
  line(`disconnected (${code})${reconnect ? ", reconnecting…" : ""}`, "note");
});
client.on("direct", ({ from, payload }) => line(payload.text, "direct", `${from ?? "server"} → you`));
/** Leaves the current room (if any) and joins `name`. */
function enter(name) {
  if (sub) {
    sub.unsubscribe();
    line(`left ${sub.topic}`, "note");
  }
  room = name;
  $("room").value = name;
  let subscribedBefore = false;
  sub = client.subscribe(name, { recover: true });
  window.chat.sub = sub;
  sub.on("subscribed", ({ recovered }) => {
    if (subscribedBefore) line(recovered ? "back: nothing missed" : "back: some history was lost", "note");
    else line(`you are in ${name}`, "note");
    subscribedBefore = true;
    refreshPresence();
  });
  sub.on("message", ({ payload }) => line(payload.text, "", payload.from));
  sub.on("join", ({ user }) => {
    line(`${user ?? "a guest"} joined`, "note");
    refreshPresence();
  });
  sub.on("leave", ({ user }) => {
    line(`${user ?? "a guest"} left`, "note");
    refreshPresence();
  });
  sub.on("error", (e) => line(`error: ${e.code}`, "note"));
}

$("rooms").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const name = $("room").value.trim();
  if (name && name !== room) enter(name);
});
enter(room);

$("say").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  $("text").value = "";
  try {
    await client.publish(room, { from: client.info?.user ?? "guest", text });
  } catch (e) {
    line(`not sent: ${e.code}`, "note");
  }
});
$("dm").addEventListener("click", async () => {
  const to = $("to").value.trim();
  const text = $("text").value.trim();
  if (!to || !text) return;
  $("text").value = "";
  try {
    await client.send(to, { text });
    line(text, "direct", `you → ${to}`);
  } catch (e) {
    line(`not sent: ${e.code}`, "note");
  }
});

// Presence also changes without a leave (a node that died: its entries
// expire), so the list is refreshed now and then too.
setInterval(() => client.state === "connected" && sub?.state === "subscribed" && refreshPresence(), 3000);

client.connect();
