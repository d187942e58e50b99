// Types of shardcast-client (src/index.js).

/**
 * An error from the server (the protocol's `code`) or the client (`timeout`, `pending_full`,
 * `disconnected`, `message_too_large` for a request over the server's emulation body limit).
 */
export class ShardcastError extends Error {
  constructor(code: string, message: string, backendCode?: number);
  readonly code: string;
  /** The backend's own code when one of its hooks refused the request (the error frame's `backend_code`). */
  readonly backendCode: number | undefined;
}

export interface ReconnectOptions {
  /** The first reconnect delay's upper bound, in ms (default 200); it doubles per attempt. */
  minDelayMs?: number;
  /** Largest reconnect delay, in ms (default 20000). */
  maxDelayMs?: number;
}

/** How a session travels: a WebSocket, or a fallback where WebSocket cannot get through. */
export type Transport = "websocket" | "http_stream" | "sse";

export interface ShardcastOptions {
  /** A connection token (JWT), sent as `?token=`. */
  token?: string;
  /** Called on every connect and before the token expires (then sent as `refresh`). */
  getToken?: () => Promise<string>;
  /**
   * The encoding (default "json"); "flatbuffers" needs the `flatbuffers` package. It applies to
   * WebSocket only: a fallback session speaks JSON whatever this says.
   */
  protocol?: "json" | "flatbuffers";
  reconnect?: ReconnectOptions;
  /** How long a request waits for its reply, in ms (default 10000). */
  timeoutMs?: number;
  /** Publishes and sends queued while disconnected (default 1000); beyond, they reject at once. */
  maxPending?: number;
  /** A WebSocket class to use instead of the global one (or `ws` in Node.js). */
  WebSocket?: unknown;
  /**
   * Any JSON value: sent as `{"type":"connect","data":…}`, the first frame of
   * every connection, for the server's connect hook (`[proxy] connect_url`); in the connect
   * request of a fallback session.
   */
  connectData?: unknown;
  /**
   * The transports, in the order tried at every (re)connect (default all three, in this order).
   * One that fails before its welcome, or does not get through within `fallbackDelayMs`, gives
   * way to the next; the fallback that last got through is tried right after WebSocket.
   */
  transports?: Transport[];
  /**
   * How long a transport that is not the last one has to get through, in ms (default 3000): a
   * WebSocket to open, a fallback to bring its welcome.
   */
  fallbackDelayMs?: number;
  /**
   * The fallback endpoints' paths (default "stream", "sse", "emulation"): from `/` on they
   * replace the URL's path, else its last segment (`wss://host/ws` → `https://host/stream`).
   */
  paths?: { http_stream?: string; sse?: string; emulation?: string };
  /** A fetch to use instead of the global one (HTTP-streaming and the fallbacks' requests). */
  fetch?: (input: string, init?: unknown) => Promise<unknown>;
  /** An EventSource class to use instead of the global one (SSE). */
  EventSource?: unknown;
}

export interface SubscribeOptions {
  /** Recover what was published while away (namespaces with `recover = true`). */
  recover?: boolean;
  /** Any JSON value, sent with every (re)subscribe for the backend's subscribe hook (`proxy` namespaces). */
  data?: unknown;
  /** A subscription token (`token` namespaces), sent with every (re)subscribe. */
  token?: string;
  /** Asked for a subscription token before every (re)subscribe and before its `exp` (then renewed with it). */
  getToken?: (topic: string) => Promise<string>;
}

export interface Welcome {
  client: string;
  node: string;
  shard: number;
  user: string | null;
  /** The transport this connection came over. */
  transport: Transport;
  /** The connect hook's `data`, when it gave one. */
  data?: unknown;
}

export interface Disconnected {
  code: number;
  reason: string;
  /** Whether the client will reconnect by itself. */
  reconnect: boolean;
}

export interface MessageEvent {
  /** A JSON value, or bytes (Uint8Array) for a payload that is not JSON. */
  payload: unknown;
  /** On history topics: the message's offset and epoch. */
  offset?: number;
  epoch?: string;
}

export interface SubscribedEvent {
  /** Whether everything missed while away was recovered (always false on a first subscribe). */
  recovered: boolean;
  offset?: number;
  epoch?: string;
  /** The ack's `data`: what a `proxy` namespace's subscribe hook gave, if anything. */
  data?: unknown;
}

export interface UnsubscribedEvent {
  /** The server's reason (e.g. "token expired"), or "unsubscribe" after `unsubscribe()`. */
  reason: string;
  /** Whether the server ended it (then it is not subscribed again after a reconnect). */
  server: boolean;
}

export interface PresenceEvent {
  client: string;
  user: string | null;
}

export interface Publication {
  offset: number;
  payload: unknown;
}

export interface HistoryResult {
  publications: Publication[];
  offset: number;
  epoch: string;
}

type Handler<T> = (value: T) => void;

export class Subscription {
  readonly topic: string;
  readonly recover: boolean;
  /** The last offset delivered and its epoch (history topics). */
  readonly offset: number | undefined;
  readonly epoch: string | undefined;
  /** The `data` of the last subscribe ack (a `proxy` namespace's subscribe hook), if any. */
  readonly ackData: unknown;
  /**
   * "subscribing" also while a refusal that may heal (e.g. `not_available`)
   * waits for its retry; "unsubscribed" after one that cannot (e.g. `forbidden`).
   */
  readonly state: "unsubscribed" | "subscribing" | "subscribed";
  on(event: "subscribed", fn: Handler<SubscribedEvent>): this;
  on(event: "message", fn: Handler<MessageEvent>): this;
  on(event: "join" | "leave", fn: Handler<PresenceEvent>): this;
  /** A refused subscribe (retried with backoff unless it cannot heal), or another request's error. */
  on(event: "error", fn: Handler<ShardcastError>): this;
  /** After `unsubscribe()`, or when the server ended the subscription (`server: true`). */
  on(event: "unsubscribed", fn: Handler<UnsubscribedEvent>): this;
  off(event: string, fn: Function): this;
  unsubscribe(): void;
  presence(): Promise<Record<string, { user: string | null; info?: unknown }>>;
  presenceStats(): Promise<{ clients: number; users: number }>;
  history(opts?: { since?: { offset: number; epoch: string }; limit?: number }): Promise<HistoryResult>;
}

export class Shardcast {
  /**
   * @param url one node's URL, or several nodes' (sharing one Redis), tried
   *   in order: a failed attempt or a lost connection moves on to the next,
   *   wrapping around.
   */
  constructor(url: string | string[], options?: ShardcastOptions);
  /** The URL of the current connection, or of the next attempt. */
  readonly url: string;
  /** Every URL given, in the order they are tried. */
  readonly urls: readonly string[];
  readonly protocol: "json" | "flatbuffers";
  /** The transports, in the order they are tried. */
  readonly transports: readonly Transport[];
  /** The transport of the current connection, when connected. */
  readonly transport: Transport | undefined;
  readonly state: "disconnected" | "connecting" | "connected";
  /** The current connection's welcome. */
  readonly info: Welcome | undefined;
  /** Connects, to the first URL first, and reconnects until `disconnect()` or a final close. */
  connect(): void;
  /** Closes; queued publishes and sends reject with `disconnected`, and so do new ones until `connect()`. */
  disconnect(): void;
  /** A new subscription, or the one there is for `topic` (whose options stay as they were). */
  subscribe(topic: string, options?: SubscribeOptions): Subscription;
  getSubscription(topic: string): Subscription | undefined;
  /** Queued while (re)connecting; rejects at once with `disconnected` once the client has stopped. */
  publish(topic: string, payload: unknown, options?: { skipSelf?: boolean }): Promise<void>;
  /** Like `publish`. */
  send(user: string, payload: unknown): Promise<void>;
  /**
   * Calls the backend's rpc hook: resolves with its answer's `data` (`null` when none), rejects
   * with `backend_error` (and `backendCode`), `not_available` or `timeout`. Queued like `publish`.
   */
  rpc(method: string, data?: unknown): Promise<unknown>;
  on(event: "connecting", fn: Handler<void>): this;
  on(event: "connected", fn: Handler<Welcome>): this;
  on(event: "disconnected", fn: Handler<Disconnected>): this;
  on(event: "direct", fn: Handler<{ from: string | null; payload: unknown }>): this;
  /** The server ended a subscription (its subscription token expired); also emitted by the Subscription. */
  on(event: "unsubscribed", fn: Handler<{ topic: string; reason: string }>): this;
  on(event: "error", fn: Handler<ShardcastError>): this;
  off(event: string, fn: Function): this;
}

/** The delay before reconnect attempt `attempt`: full jitter, bounded by maxDelayMs. */
export function backoffDelay(attempt: number, opts: { minDelayMs: number; maxDelayMs: number }, random?: () => number): number;

export default Shardcast;
