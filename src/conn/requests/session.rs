//! Who a connection is: anonymous, waiting for an `auth` request or for the
//! connect hook, or an authenticated user; and the requests that change
//! that (`auth`, `refresh`), the welcome frame, and the closes that end it
//! (4001, 4008).
//!
//! Everything here runs on the connection's shard, at connect time or on one
//! of these rare requests; the delivery path never looks at a session.

use std::rc::Rc;
use std::sync::Arc;

use crate::auth::{Identity, IpSlot, TokenError, TopicOptions, UserSlot};
use crate::metrics::ShardStats;
use crate::codes::{close, ErrorCode};
use crate::protocol::RequestError;
use crate::shard::{Deadline, Then};
use crate::topic;
use crate::ws::frame::Opcode;

use super::hooks::Connected;
use super::Conn;

/// The rare per-connection state of identity and admission. Boxed in
/// [`Conn`]; an anonymous connection on a server without per-IP limits has
/// none at all.
pub(in crate::conn) struct Session {
    state: State,
    /// This connection's count in the node's per-IP table (released on drop).
    _ip: Option<IpSlot>,
    /// The first request, when it was not `connect`: handled once the
    /// connect hook answered and the welcome is out.
    deferred: Option<(Opcode, Vec<u8>)>,
}

enum State {
    /// No identity: auth is off, or `[auth] allow_anonymous` let it in.
    Anonymous,
    /// Auth is on and no token came with the upgrade: every request but
    /// `auth` is refused until one succeeds or `auth_timeout_ms` passes.
    AwaitingAuth,
    /// `[proxy] connect_url` decides who it is (boxed: rare and short).
    Connecting(Box<Connecting>),
    User {
        identity: Identity,
        /// This connection's count in the node's per-user table.
        _slot: UserSlot,
        /// The internal topic carrying the user's direct messages.
        topic: Rc<str>,
        /// A connect hook's `expire_at` (unix seconds), renewed by refresh.
        expire_at: Option<u64>,
    },
}

/// A connection waiting for the connect hook.
struct Connecting {
    /// The upgrade's forwarded headers; taken when connect is called.
    headers: Option<Vec<(String, String)>>,
    /// The connection's valid token, under `connect_always`.
    identity: Option<Identity>,
}

impl Conn {
    /// Starts the connection's session right after the upgrade: verifies the
    /// handshake's token, or waits for an `auth` request, or admits it as
    /// anonymous; queues the welcome frame once it is authenticated.
    pub(in crate::conn) fn begin_session(&mut self, token: Option<String>, ip: Option<IpSlot>, headers: Vec<(String, String)>) {
        let config = self.shard.config.clone();
        if config.proxy.connect_url.is_some() {
            // The connect hook decides for a connection without a valid
            // token, or for every one with connect_always.
            let verified = match (&config.auth.verifier, &token) {
                (Some(verifier), Some(token)) => verifier.verify(token).ok(),
                _ => None,
            };
            if verified.is_none() || config.proxy.connect_always {
                let connecting = Connecting { headers: Some(headers), identity: verified };
                self.session = Some(Box::new(Session { state: State::Connecting(Box::new(connecting)), _ip: ip, deferred: None }));
                let wait = config.proxy.connect_wait;
                if wait.is_zero() {
                    return self.call_connect(None);
                }
                let at = crate::clock::Stamp::from(std::time::Instant::now() + wait);
                return self.shard.set_deadline(self.peer.id, at, Deadline::ConnectWait);
            }
        }
        let auth = &config.auth;
        let state = match (&auth.verifier, token) {
            (None, _) => State::Anonymous,
            (Some(verifier), Some(token)) => match verifier.verify(&token) {
                Ok(identity) => {
                    self.session = Some(Box::new(Session { state: State::Anonymous, _ip: ip, deferred: None }));
                    return self.authenticate(identity, None, None);
                }
                Err(e) => {
                    self.session = ip.map(|ip| Box::new(Session { state: State::Anonymous, _ip: Some(ip), deferred: None }));
                    return self.refuse_token(e);
                }
            },
            (Some(_), None) if auth.allow_anonymous => State::Anonymous,
            (Some(_), None) => {
                let at = crate::clock::Stamp::from(std::time::Instant::now() + auth.auth_timeout);
                self.shard.set_deadline(self.peer.id, at, Deadline::Auth);
                State::AwaitingAuth
            }
        };
        if matches!(state, State::Anonymous) {
            self.send(self.welcome(None, None));
        }
        if ip.is_some() || !matches!(state, State::Anonymous) {
            self.session = Some(Box::new(Session { state, _ip: ip, deferred: None }));
        }
    }

    /// Keeps the per-IP count of a connection that has no session otherwise
    /// (`/echo`).
    pub(in crate::conn) fn hold_ip(&mut self, ip: Option<IpSlot>) {
        self.session = ip.map(|ip| Box::new(Session { state: State::Anonymous, _ip: Some(ip), deferred: None }));
    }

    /// The welcome frame; the first one also tells the webhooks
    /// (`client_connected`).
    fn welcome(&self, user: Option<&str>, data: Option<&str>) -> bytes::Bytes {
        let shard = &self.shard;
        let encoding = self.peer.encoding();
        let client = shard.client_id(self.peer.id);
        let session = shard.fallback_of(self.peer.id);
        let fallback = session.as_ref().map(|(transport, id)| (transport.name(), &**id));
        let frame = encoding.welcome_frame(&client, &shard.config.server.node_id, shard.index, user, data, fallback);
        if !self.peer.mark_welcomed() {
            shard.client_event(true, client.into(), user);
        }
        frame
    }

    /// Whether the connect hook is still to be called (its first request is
    /// awaited).
    pub(in crate::conn) fn connect_uncalled(&self) -> bool {
        matches!(&self.session.as_deref().map(|s| &s.state), Some(State::Connecting(c)) if c.headers.is_some())
    }

    /// The forwarded headers, once: `None` when connect was already called.
    pub(in crate::conn) fn take_connect_headers(&mut self) -> Option<Vec<(String, String)>> {
        match &mut self.session.as_deref_mut()?.state {
            State::Connecting(c) => c.headers.take(),
            _ => None,
        }
    }

    pub(in crate::conn) fn defer_first_request(&mut self, opcode: Opcode, data: Vec<u8>) {
        if let Some(session) = self.session.as_deref_mut() {
            session.deferred = Some((opcode, data));
        }
    }

    /// The deferred first request, once the session is settled and the
    /// connection is not waiting for anything (so its welcome went first).
    pub(in crate::conn) fn take_deferred_request(&mut self) -> Option<(Opcode, Vec<u8>)> {
        if self.peer.awaiting() || self.blocked.is_some() {
            return None;
        }
        let session = self.session.as_deref_mut()?;
        if matches!(session.state, State::Connecting(_)) {
            return None;
        }
        session.deferred.take()
    }

    /// The user a hook body names: the identity's, or, while connecting
    /// under `connect_always`, the valid token's.
    pub(in crate::conn) fn hook_user(&self) -> Option<&str> {
        match &self.session.as_deref()?.state {
            State::User { identity, .. } => Some(&identity.user),
            State::Connecting(c) => c.identity.as_ref().map(|i| &*i.user),
            _ => None,
        }
    }

    pub(in crate::conn) fn hook_expire_at(&self) -> Option<u64> {
        match &self.session.as_deref()?.state {
            State::User { expire_at, .. } => *expire_at,
            _ => None,
        }
    }

    pub(in crate::conn) fn set_hook_expire_at(&mut self, at: Option<u64>) {
        if let Some(State::User { expire_at, .. }) = self.session.as_deref_mut().map(|s| &mut s.state) {
            *expire_at = at;
        }
    }

    /// Applies the connect hook's decision: welcome the connection as its
    /// user (or anonymous) with the result's data and channels, or close it.
    pub(in crate::conn) fn finish_connect(&mut self, connected: Connected) {
        let token_identity = match self.session.as_deref_mut().map(|s| &mut s.state) {
            Some(State::Connecting(c)) => c.identity.take(),
            _ => return,
        };
        let (user, expire_at, channels, info, data) = match connected {
            Connected::Refused { code, reason } => {
                if code == close::UNAUTHORIZED {
                    ShardStats::add(&self.shard.stats().auth_failures, 1);
                }
                // The close frame cuts a long reason (`ws::frame::close`).
                return self.close_session(code, &reason);
            }
            Connected::As { user, expire_at, channels, info, data } => (user, expire_at, channels, info, data),
        };
        let identity = match (user, token_identity) {
            (Some(user), Some(token)) if *token.user == *user => Some(token),
            (Some(user), _) => Some(Identity { user: user.into(), expires_at: None, subscribe: Box::default(), publish: Box::default(), channels: Box::default(), info: None }),
            (None, token) => token,
        };
        match identity {
            Some(mut identity) => {
                // Shown with the connection in presence.
                identity.info = info.map(Arc::from);
                // Subscribed before the welcome goes out (see authenticate).
                identity.channels = channels.into_iter().map(String::into_boxed_str).chain(identity.channels.iter().cloned()).collect();
                self.authenticate(identity, None, data.as_deref());
                if let (Some(at), Some(State::User { expire_at: slot, .. })) = (expire_at, self.session.as_deref_mut().map(|s| &mut s.state)) {
                    *slot = Some(at);
                    self.arm_expiry(at);
                }
            }
            None => {
                if let Some(session) = self.session.as_deref_mut() {
                    session.state = State::Anonymous;
                }
                // The welcome goes once the channels are effective.
                self.subscribe_server_side(channels.iter());
                let welcome = self.welcome(None, data.as_deref());
                self.shard.clone().when_effective(&self.peer, self.topics.iter().map(|t| &**t), welcome);
            }
        }
    }

    /// The verified identity; `None` for anonymous connections.
    pub(in crate::conn) fn identity(&self) -> Option<&Identity> {
        match &self.session.as_deref()?.state {
            State::User { identity, .. } => Some(identity),
            _ => None,
        }
    }

    pub(in crate::conn) fn awaiting_auth(&self) -> bool {
        matches!(self.session.as_deref(), Some(Session { state: State::AwaitingAuth, .. }))
    }

    /// The internal topic of the connection's user, to leave when it closes.
    pub(in crate::conn) fn user_topic(&self) -> Option<&Rc<str>> {
        match &self.session.as_deref()?.state {
            State::User { topic, .. } => Some(topic),
            _ => None,
        }
    }

    /// Makes the connection `identity`'s: counts it against the user's
    /// connection limit, arms the expiry close, subscribes it to the user's
    /// direct messages and to the token's `channels`, and queues `auth`'s
    /// ack (when `ack`) and the welcome frame (with the connect hook's
    /// `data`). The welcome goes out once those subscriptions are effective
    /// on every shard (and node), so a direct message or publish sent after
    /// it arrives.
    fn authenticate(&mut self, mut identity: Identity, ack: Option<u64>, data: Option<&str>) {
        let shard = self.shard.clone();
        let Some(slot) = shard.admission.admit_user(&identity.user) else {
            ShardStats::add(&shard.stats().user_limit_rejections, 1);
            return self.close_session(close::TOO_MANY_CONNECTIONS_FOR_USER, "too many connections for this user");
        };
        match identity.expires_at {
            Some(at) => shard.set_deadline(self.peer.id, at, Deadline::Expiry),
            None => shard.clear_deadline(self.peer.id),
        }
        if let Some(id) = ack {
            self.send(self.peer.encoding().ack_frame(id));
        }
        let welcome = self.welcome(Some(&identity.user), data);
        let channels = std::mem::take(&mut identity.channels);
        let topic = shard.subscribe(&self.peer, &topic::user_topic(&identity.user), TopicOptions::default(), Then::Quiet, None);
        let user = State::User { identity, _slot: slot, topic: topic.clone(), expire_at: None };
        match &mut self.session {
            Some(session) => session.state = user,
            None => self.session = Some(Box::new(Session { state: user, _ip: None, deferred: None })),
        }
        // With the identity in place: presence lists these as the user's.
        self.subscribe_server_side(channels.iter());
        shard.when_effective(&self.peer, self.topics.iter().map(|t| &**t).chain([&*topic]), welcome);
    }

    /// Closes the connection for a refused token (4001, the reason names the
    /// check that failed). Nothing else is sent.
    fn refuse_token(&mut self, err: TokenError) {
        ShardStats::add(&self.shard.stats().auth_failures, 1);
        self.close_session(close::UNAUTHORIZED, err.reason());
    }

    /// Closes with a session code, after what is already queued (an ack,
    /// never a welcome). The client's own close frame is still awaited.
    fn close_session(&mut self, code: u16, reason: &str) {
        self.shard.clear_deadline(self.peer.id);
        self.peer.close(code, reason, true);
    }

    fn auth_is_off(&mut self, id: Option<u64>) {
        self.reply_error(RequestError { id, code: ErrorCode::BadRequest, message: "authentication is not enabled on this server".into() });
    }

    /// `{"type":"auth","token":…}`: authenticates a connection that brought
    /// no token (or was admitted as anonymous). A bad token closes with 4001.
    pub(in crate::conn) fn on_auth(&mut self, id: Option<u64>, token: &str) {
        let Some(verifier) = self.shard.config.auth.verifier.clone() else { return self.auth_is_off(id) };
        if self.identity().is_some() {
            let message = "already authenticated; send refresh to renew the token".into();
            return self.reply_error(RequestError { id, code: ErrorCode::BadRequest, message });
        }
        match verifier.verify(token) {
            Ok(identity) => self.authenticate(identity, id, None),
            Err(e) => self.refuse_token(e),
        }
    }

    /// `{"type":"refresh","token":…}`: a newer token for the same user moves
    /// the expiry close and replaces the permission claims. A token for
    /// another user is `forbidden`, a bad one `unauthorized`; either way the
    /// old token stays in force.
    pub(in crate::conn) fn on_refresh(&mut self, id: Option<u64>, token: &str) {
        let Some(verifier) = self.shard.config.auth.verifier.clone() else { return self.auth_is_off(id) };
        let Some(current) = self.identity() else {
            let message = "an anonymous connection has no token to refresh; send auth".into();
            return self.forbidden(id, message);
        };
        let fresh = match verifier.verify(token) {
            Ok(fresh) => fresh,
            Err(e) => {
                let message = format!("refresh token refused: {}", e.reason());
                return self.reply_error(RequestError { id, code: ErrorCode::Unauthorized, message });
            }
        };
        if fresh.user != current.user {
            return self.forbidden(id, "the token is for another user".into());
        }
        // `channels` are subscribed at connect only; `info` stays.
        let fresh = Identity { channels: Box::default(), info: current.info.clone(), ..fresh };
        match fresh.expires_at {
            Some(at) => self.shard.set_deadline(self.peer.id, at, Deadline::Expiry),
            None => self.shard.clear_deadline(self.peer.id),
        }
        if let Some(State::User { identity, expire_at, .. }) = self.session.as_deref_mut().map(|s| &mut s.state) {
            *identity = fresh;
            // The token now decides the expiry, not a connect hook's.
            *expire_at = None;
        }
        if let Some(id) = id {
            self.send(self.peer.encoding().ack_frame(id));
        }
    }

    pub(in crate::conn) fn forbidden(&mut self, id: Option<u64>, message: String) {
        ShardStats::add(&self.shard.stats().forbidden, 1);
        self.reply_error(RequestError { id, code: ErrorCode::Forbidden, message });
    }
}

