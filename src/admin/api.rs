//! The HTTP API's handlers: JSON in, JSON out, errors as
//! `{"error":{"code":…,"message":…}}` with a 4xx/5xx status (see `docs/admin.md`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::shards::Gathered;
use super::AdminState;
use crate::bus::admin::{AdminCall, ShardReport, TopicList};
use crate::clock::Stamp;
use crate::metrics::ShardStats;
use crate::codes::close;
use crate::protocol::{Kind, Outgoing};
use crate::topic;

/// An API error: its HTTP status, a stable code, and a message for people.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// The request field at fault, for 400s about one.
    field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), field: None }
    }

    /// 400 about one field of the request.
    pub fn field(field: impl Into<String>, code: &'static str, message: impl Into<String>) -> ApiError {
        let field = field.into();
        let message = format!("`{field}`: {}", message.into());
        ApiError { status: StatusCode::BAD_REQUEST, code, message, field: Some(field) }
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(field) = self.field {
            error["field"] = Value::String(field);
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

/// Answers for paths that do not exist.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint; see docs/admin.md")
}

/// Answers for a known path with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not take that method; see docs/admin.md")
}

/// `/api/*` guard: with `[admin] api_key`, the request must carry
/// `Authorization: apikey <key>` (compared in constant time).
pub async fn require_key(State(state): State<Arc<AdminState>>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("apikey "))
            .unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
            let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong `Authorization: apikey <key>`").into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("apikey"));
            return response;
        }
    }
    next.run(request).await
}

/// A JSON object request body (bounded by `[admin] max_body_bytes`), its
/// fields still raw so that each is checked on its own and a bad one is
/// named in the error.
struct Fields<'a>(HashMap<String, &'a RawValue>);

impl<'a> Fields<'a> {
    /// Parses the body as an object with only the `known` fields.
    fn parse(body: &'a Result<Bytes, BytesRejection>, known: &[&str]) -> Result<Fields<'a>, ApiError> {
        let bytes = match body {
            Ok(bytes) => bytes,
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the body is larger than [admin] max_body_bytes"));
            }
            Err(rejection) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", rejection.body_text())),
        };
        let fields: HashMap<String, &RawValue> = serde_json::from_slice(bytes)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("the body must be a JSON object: {e}")))?;
        if let Some(unknown) = fields.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(ApiError::field(unknown.clone(), "bad_request", format!("unknown field (known: {})", known.join(", "))));
        }
        Ok(Fields(fields))
    }

    /// The field's raw JSON, which must be present.
    fn raw(&self, name: &str) -> Result<&'a RawValue, ApiError> {
        self.0.get(name).copied().ok_or_else(|| ApiError::field(name, "bad_request", "missing"))
    }

    fn required<T: Deserialize<'a>>(&self, name: &str, expected: &str) -> Result<T, ApiError> {
        serde_json::from_str(self.raw(name)?.get()).map_err(|_| ApiError::field(name, "bad_request", format!("expected {expected}")))
    }

    /// An optional field; `null` counts as absent.
    fn optional<T: Deserialize<'a>>(&self, name: &str, expected: &str) -> Result<Option<T>, ApiError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(raw) => serde_json::from_str(raw.get()).map_err(|_| ApiError::field(name, "bad_request", format!("expected {expected}"))),
        }
    }
}

fn payload_bytes(state: &AdminState, payload: &RawValue) -> Result<Bytes, ApiError> {
    let text = payload.get();
    if text.len() > state.max_message_bytes {
        return Err(ApiError::field("payload", "message_too_large", "larger than [limits] max_message_bytes"));
    }
    Ok(Bytes::copy_from_slice(text.as_bytes()))
}

fn check_topic(state: &AdminState, field: String, name: &str) -> Result<(), ApiError> {
    topic::validate(name, state.max_topic_len).map_err(|why| ApiError::field(field, "invalid_topic", why))
}

fn check_user(user: &str) -> Result<(), ApiError> {
    if !crate::auth::is_user_id(user) {
        let message = format!("a user id of 1 to {} bytes", crate::auth::MAX_USER_BYTES);
        return Err(ApiError::field("user", "bad_request", message));
    }
    Ok(())
}

/// Hands messages to their topics' home shards and waits until each shard
/// has fanned its share out (locally, to the other shards, to Redis).
async fn deliver(state: &AdminState, msgs: Vec<Arc<Outgoing>>) -> Result<(), ApiError> {
    let shards = &state.shards;
    let mut per_shard: BTreeMap<usize, Vec<Arc<Outgoing>>> = BTreeMap::new();
    for msg in msgs {
        per_shard.entry(shards.home(&msg.topic)).or_default().push(msg);
    }
    let mut waiting = Vec::with_capacity(per_shard.len());
    let mut calls = Vec::with_capacity(per_shard.len());
    for (shard, msgs) in per_shard {
        let (reply, rx) = shards.reply()?;
        calls.push((shard, AdminCall::Publish { msgs, reply }));
        waiting.push((shard, rx));
    }
    for (shard, call) in calls {
        shards.call(shard, call);
    }
    let deadline = tokio::time::Instant::now() + shards.timeout;
    for (shard, rx) in waiting {
        if !matches!(tokio::time::timeout_at(deadline, rx).await, Ok(Ok(()))) {
            return Err(ApiError::unavailable(format!(
                "shard {shard} did not confirm within [admin] shard_timeout_ms; the message may still be delivered"
            )));
        }
    }
    Ok(())
}

/// `POST /api/publish`.
pub async fn publish(State(state): State<Arc<AdminState>>, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    let received = Stamp::now();
    let req = Fields::parse(&body, &["topic", "payload"])?;
    let topic: String = req.required("topic", "a string")?;
    check_topic(&state, "topic".into(), &topic)?;
    let payload = payload_bytes(&state, req.raw("payload")?)?;
    deliver(&state, vec![Outgoing::remote(&topic, Kind::Message, payload, true, received)]).await?;
    Ok(Json(json!({})))
}

/// `POST /api/broadcast`: one payload, copied once, to several topics.
pub async fn broadcast(State(state): State<Arc<AdminState>>, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    let received = Stamp::now();
    let req = Fields::parse(&body, &["topics", "payload"])?;
    let topics: Vec<String> = req.required("topics", "an array of topic names")?;
    if topics.is_empty() {
        return Err(ApiError::field("topics", "bad_request", "at least one topic"));
    }
    for (i, name) in topics.iter().enumerate() {
        check_topic(&state, format!("topics[{i}]"), name)?;
    }
    let payload = payload_bytes(&state, req.raw("payload")?)?;
    let msgs = topics.iter().map(|t| Outgoing::remote(t, Kind::Message, payload.clone(), true, received)).collect();
    deliver(&state, msgs).await?;
    Ok(Json(json!({})))
}

/// `POST /api/send`: a direct message (`from: null`) to every connection of
/// the user, on every node.
pub async fn send(State(state): State<Arc<AdminState>>, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    let received = Stamp::now();
    let req = Fields::parse(&body, &["user", "payload"])?;
    let user: String = req.required("user", "a user id (string)")?;
    check_user(&user)?;
    let payload = payload_bytes(&state, req.raw("payload")?)?;
    let msg = Outgoing::remote(&topic::user_topic(&user), Kind::Direct { from: None }, payload, true, received);
    deliver(&state, vec![msg]).await?;
    Ok(Json(json!({})))
}

/// `POST /api/disconnect`: closes every connection of the user on every
/// node; answers how many were closed on this one.
pub async fn disconnect(State(state): State<Arc<AdminState>>, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    let req = Fields::parse(&body, &["user", "code", "reason"])?;
    let user: String = req.required("user", "a user id (string)")?;
    check_user(&user)?;
    let code = match req.optional::<i64>("code", "an integer close code in 4000-4999")? {
        None => close::DISCONNECTED_BY_SERVER,
        Some(code @ 4000..=4999) => code as u16,
        Some(_) => return Err(ApiError::field("code", "bad_request", "a close code in 4000-4999")),
    };
    let reason: String = req.optional("reason", "a string")?.unwrap_or_else(|| "disconnected by server".into());
    if reason.len() > close::MAX_REASON_BYTES {
        return Err(ApiError::field("reason", "bad_request", "at most 123 bytes (a close frame's limit)"));
    }
    let (user, reason): (Arc<str>, Arc<str>) = (user.into(), reason.into());
    let bridge = state.shards.bridge;
    let gathered = state
        .shards
        .gather(|shard, reply| AdminCall::Disconnect {
            user: user.clone(),
            code,
            reason: reason.clone(),
            forward: Some(shard) == bridge,
            reply: Some(reply),
        })
        .await?;
    let mut answer = json!({ "closed": gathered.answers.iter().sum::<usize>() });
    if !gathered.missing.is_empty() {
        answer["missing_shards"] = json!(gathered.missing);
    }
    Ok(Json(answer))
}

async fn reports(state: &AdminState) -> Result<Gathered<ShardReport>, ApiError> {
    state.shards.gather(|shard, reply| AdminCall::Report { node_topics: shard == 0, reply }).await
}

/// This node's summary, as announced to the others.
pub fn summary(state: &AdminState, reports: &Gathered<ShardReport>) -> super::cluster::NodeSummary {
    let history = state.history.lock().expect("admin state lock");
    let sum = |series| ShardStats::total(&state.stats, series);
    super::cluster::NodeSummary {
        id: state.node_id.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        shards: state.shards.count(),
        connections: sum(|s| &s.connections),
        users: state.admission.users() as u64,
        rates: history.rates(),
        dropped_frames: sum(|s| &s.dropped_frames),
        slow_consumer_disconnects: sum(|s| &s.slow_consumer_disconnects),
        redis_connected: redis_state(state, reports).is_some_and(|r| r["connected"] == true),
    }
}

/// The bridge's state, or `None` without Redis.
fn redis_state(state: &AdminState, reports: &Gathered<ShardReport>) -> Option<Value> {
    let bridge = state.shards.bridge?;
    let get = |series: fn(&ShardStats) -> &AtomicU64| ShardStats::get(series(&state.stats[bridge]));
    let report = reports.answers.iter().find(|r| r.shard == bridge).and_then(|r| r.redis);
    Some(match report {
        None => json!({ "connected": false, "answered": false }),
        Some(r) => json!({
            "connected": r.subscriber_connected && r.publisher_connected,
            "subscriber_connected": r.subscriber_connected,
            "publisher_connected": r.publisher_connected,
            "channels": r.channels,
            "bridge_shard": bridge,
            "published_total": get(|s| &s.redis_published),
            "received_total": get(|s| &s.redis_received),
            "dropped_total": get(|s| &s.redis_dropped),
            "reconnects_total": get(|s| &s.redis_reconnects),
            "buffered": get(|s| &s.redis_buffered),
            "pipeline_depth": get(|s| &s.redis_pipeline_depth),
        }),
    })
}

/// `GET /api/info`: this node, its shards, Redis, and the other live nodes.
pub async fn info(State(state): State<Arc<AdminState>>) -> Result<Json<Value>, ApiError> {
    let reports = reports(&state).await?;
    let node = summary(&state, &reports);
    let shard_rates = state.history.lock().expect("admin state lock").shard_rates.clone();
    let shards: Vec<Value> = reports
        .answers
        .iter()
        .map(|r| {
            let rates = shard_rates.get(r.shard).copied().unwrap_or_default();
            let stats = &state.stats[r.shard];
            json!({
                "shard": r.shard,
                "connections": r.connections,
                "subscriptions": r.subscriptions,
                "topics": r.topics,
                "accepting": r.accepting,
                "messages_in_per_second": rates.messages_in_per_second,
                "messages_out_per_second": rates.messages_out_per_second,
                "deliveries_per_second": rates.deliveries_per_second,
                "dropped_frames_total": ShardStats::get(&stats.dropped_frames),
                "slow_consumer_disconnects_total": ShardStats::get(&stats.slow_consumer_disconnects),
            })
        })
        .collect();
    let topics = reports.answers.iter().find_map(|r| r.node_topics);
    let nodes = state.nodes.lock().expect("admin state lock").live(Instant::now());
    Ok(Json(json!({
        "node": {
            "id": node.id,
            "version": node.version,
            "uptime_seconds": node.uptime_seconds,
            "connections": node.connections,
            "users": node.users,
            "subscriptions": reports.answers.iter().map(|r| r.subscriptions).sum::<usize>(),
            "topics": topics,
            "messages_in_per_second": node.rates.messages_in_per_second,
            "messages_out_per_second": node.rates.messages_out_per_second,
            "deliveries_per_second": node.rates.deliveries_per_second,
            "dropped_frames_total": node.dropped_frames,
            "slow_consumer_disconnects_total": node.slow_consumer_disconnects,
            "shards": shards,
            "missing_shards": reports.missing,
            "redis": redis_state(&state, &reports),
        },
        "nodes": nodes,
    })))
}

/// `GET /api/history[?since=<unix ms>]`: the last five minutes of this
/// node, one sample a second; with `since`, only the newer samples.
pub async fn history(State(state): State<Arc<AdminState>>, RawQuery(query): RawQuery) -> Result<Json<Value>, ApiError> {
    let mut since = 0u64;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*key {
            "since" => since = value.parse().map_err(|_| ApiError::field("since", "bad_request", "a Unix time in milliseconds"))?,
            other => return Err(ApiError::field(other, "bad_request", "unknown parameter (since is known)")),
        }
    }
    let history = state.history.lock().expect("admin state lock");
    let samples: Vec<_> = history.samples.iter().filter(|s| s.t > since).collect();
    Ok(Json(json!({ "interval_ms": 1000, "samples": samples })))
}

/// Largest `limit` of `/api/topics`.
const MAX_TOPICS_LIMIT: usize = 10_000;

/// `GET /api/topics?prefix=…&limit=…`: topics with their subscribers on this
/// node, by name.
pub async fn topics(State(state): State<Arc<AdminState>>, RawQuery(query): RawQuery) -> Result<Json<Value>, ApiError> {
    let mut prefix = String::new();
    let mut limit = 100;
    let raw = query.unwrap_or_default();
    for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
        match &*key {
            "prefix" => prefix = value.into_owned(),
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_TOPICS_LIMIT).contains(n))
                    .ok_or_else(|| ApiError::field("limit", "bad_request", "an integer in 1..=10000"))?;
            }
            other => return Err(ApiError::field(other, "bad_request", "unknown parameter (prefix and limit are known)")),
        }
    }
    let gathered = state
        .shards
        .gather(|_, reply| AdminCall::Topics { prefix: prefix.clone(), limit, reply })
        .await?;
    let mut merged: BTreeMap<String, usize> = BTreeMap::new();
    let mut more = false;
    for TopicList { topics, more: shard_more } in gathered.answers {
        more |= shard_more;
        for (name, count) in topics {
            *merged.entry(name).or_default() += count;
        }
    }
    more |= merged.len() > limit;
    let topics: Vec<Value> = merged.into_iter().take(limit).map(|(topic, n)| json!({ "topic": topic, "subscribers": n })).collect();
    Ok(Json(json!({ "topics": topics, "truncated": more, "missing_shards": gathered.missing })))
}

/// `GET /healthz`: the process runs.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: every shard answers and accepts, and Redis (when
/// configured) is connected; 503 naming the reason otherwise.
pub async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        let reason = "shutting down: draining connections";
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "ready": false, "reason": reason, "reasons": [reason] }))).into_response();
    }
    let reports = match reports(&state).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let mut reasons = Vec::new();
    for shard in &reports.missing {
        reasons.push(format!("shard {shard} did not answer within [admin] shard_timeout_ms"));
    }
    if reports.answers.iter().any(|r| !r.accepting) {
        reasons.push("shutting down: shards no longer accept connections".to_string());
    }
    if let Some(redis) = redis_state(&state, &reports) {
        if redis["connected"] != true {
            reasons.push("redis is not connected (the bridge is retrying)".to_string());
        }
    }
    if reasons.is_empty() {
        (StatusCode::OK, Json(json!({ "ready": true }))).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "ready": false, "reason": reasons.join("; "), "reasons": reasons }))).into_response()
    }
}

/// `GET /metrics`: Prometheus / OpenMetrics text.
pub async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let mut node: Vec<Box<dyn prometheus_client::collector::Collector>> = vec![Box::new(state.admission.gauges())];
    if let Some(hooks) = &state.hooks {
        node.push(Box::new(hooks.clone()));
    }
    if let Some(webhooks) = &state.webhooks {
        node.push(Box::new(webhooks.clone()));
    }
    let page = crate::metrics::render(&state.stats, node);
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], page).into_response()
}

/// `GET /`: the dashboard, embedded in the binary.
pub async fn dashboard() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")],
        super::DASHBOARD_HTML,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(text: &str) -> Result<Bytes, BytesRejection> {
        Ok(Bytes::copy_from_slice(text.as_bytes()))
    }

    #[test]
    fn fields_are_checked_one_by_one_and_named() {
        let b = body(r#"{"topic": 5, "payload": {"a": [1]}}"#);
        let f = Fields::parse(&b, &["topic", "payload"]).unwrap();
        assert_eq!(f.raw("payload").unwrap().get(), r#"{"a": [1]}"#);
        assert_eq!(f.required::<String>("topic", "a string").unwrap_err().field.as_deref(), Some("topic"));
        let b = body(r#"{"payload": 1}"#);
        let f = Fields::parse(&b, &["topic", "payload"]).unwrap();
        assert_eq!(f.raw("topic").unwrap_err().field.as_deref(), Some("topic"));
        let b = body(r#"{"topic": "a", "extra": 1}"#);
        assert_eq!(Fields::parse(&b, &["topic"]).err().unwrap().field.as_deref(), Some("extra"));
        for bad in ["[1]", "{", "", "null"] {
            let b = body(bad);
            let e = Fields::parse(&b, &["topic"]).err().unwrap();
            assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "bad_request"), "{bad}");
        }
    }
}
