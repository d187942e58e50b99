//! A backend's HTTP answer -> [`HookAnswer`]. A 200 whose body is exactly
//! one of `{"result":{…}}`, `{"error":{"code":N,"message":"…"}}` or
//! `{"disconnect":{"code":4000..=4999,"reason":"…"}}` is an answer;
//! anything else (another status, another body, a result of the wrong
//! shape for its hook) is a backend failure.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::http::{Answer, PostError};
use crate::auth::MAX_USER_BYTES;
use crate::bus::hooks::{Failure, Hook, HookAnswer, HookResult};

/// Other top-level fields are ignored (a backend may add its own).
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<ErrorBody>,
    #[serde(default)]
    disconnect: Option<DisconnectBody>,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: u32,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct DisconnectBody {
    code: u16,
    #[serde(default)]
    reason: String,
}

/// Judges what came back for a call of `hook`.
pub fn judge(hook: Hook, answer: Result<Answer, PostError>) -> HookAnswer {
    let answer = match answer {
        Ok(answer) => answer,
        Err(PostError::Timeout) => return HookAnswer::Failed(Failure::Timeout),
        Err(PostError::Transport) => return HookAnswer::Failed(Failure::Transport),
        Err(PostError::TooLong) => return HookAnswer::Failed(Failure::BadBody),
    };
    if answer.status != 200 {
        return HookAnswer::Failed(Failure::Status(answer.status));
    }
    parse(hook, &answer.body).unwrap_or(HookAnswer::Failed(Failure::BadBody))
}

/// A judged answer held to the node's bounds: a connect result whose
/// `info` is longer than `max_info_bytes` is a failure.
pub fn bounded(answer: HookAnswer, max_info_bytes: usize) -> HookAnswer {
    match &answer {
        HookAnswer::Result(HookResult::Connect(r)) if r.info.as_ref().is_some_and(|i| i.get().len() > max_info_bytes) => HookAnswer::Failed(Failure::BadBody),
        _ => answer,
    }
}

fn parse(hook: Hook, body: &[u8]) -> Option<HookAnswer> {
    let envelope: Envelope<'_> = serde_json::from_slice(body).ok()?;
    match envelope {
        Envelope { result: Some(result), error: None, disconnect: None } => {
            // A result is an object (its fields are all optional).
            if !result.get().starts_with('{') {
                return None;
            }
            result_of(hook, result.get()).map(HookAnswer::Result)
        }
        Envelope { result: None, error: Some(error), disconnect: None } => {
            Some(HookAnswer::Error { code: error.code, message: error.message })
        }
        Envelope { result: None, error: None, disconnect: Some(d) } if (4000..=4999).contains(&d.code) => {
            Some(HookAnswer::Disconnect { code: d.code, reason: d.reason })
        }
        _ => None,
    }
}

fn result_of(hook: Hook, json: &str) -> Option<HookResult> {
    Some(match hook {
        Hook::Connect => {
            let result: crate::bus::hooks::ConnectResult = serde_json::from_str(json).ok()?;
            if result.user.len() > MAX_USER_BYTES {
                return None;
            }
            HookResult::Connect(result)
        }
        Hook::Refresh => HookResult::Refresh(serde_json::from_str(json).ok()?),
        Hook::Subscribe => HookResult::Subscribe(serde_json::from_str(json).ok()?),
        Hook::Publish => {
            let result: crate::bus::hooks::PublishResult = serde_json::from_str(json).ok()?;
            if result.payload.is_some() && result.payload_base64.is_some() {
                return None;
            }
            HookResult::Publish(result)
        }
        Hook::Rpc => HookResult::Rpc(serde_json::from_str(json).ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> Result<Answer, PostError> {
        Ok(Answer { status: 200, body: bytes::Bytes::copy_from_slice(body.as_bytes()) })
    }

    fn failed(a: HookAnswer) -> Option<Failure> {
        match a {
            HookAnswer::Failed(f) => Some(f),
            _ => None,
        }
    }

    #[test]
    fn exactly_one_of_the_three_shapes_is_an_answer() {
        let connect = judge(Hook::Connect, ok(r#"{"result":{"user":"alice","expire_at":1,"channels":["a"],"info":{"x":1},"data":[1]}}"#));
        let HookAnswer::Result(HookResult::Connect(c)) = connect else { panic!("{connect:?}") };
        assert_eq!((c.user.as_str(), c.expire_at, c.channels.len()), ("alice", Some(1), 1));
        assert_eq!(c.info.unwrap().get(), r#"{"x":1}"#);
        assert!(matches!(judge(Hook::Rpc, ok(r#"{"error":{"code":1000,"message":"no"}}"#)), HookAnswer::Error { code: 1000, .. }));
        assert!(matches!(judge(Hook::Rpc, ok(r#"{"disconnect":{"code":4100,"reason":"bye"}}"#)), HookAnswer::Disconnect { code: 4100, .. }));
        for bad in [
            r#"{}"#,
            r#"{"result":{},"error":{"code":1}}"#,
            r#"{"result":1}"#,
            r#"{"result":null}"#,
            r#"{"disconnect":{"code":1000,"reason":"x"}}"#,
            r#"{"error":{"code":-1}}"#,
            r#"{"error":{"message":"no code"}}"#,
            r#"not json"#,
        ] {
            assert_eq!(failed(judge(Hook::Rpc, ok(bad))), Some(Failure::BadBody), "{bad}");
        }
        assert_eq!(failed(judge(Hook::Connect, ok(r#"{"result":{"user":5}}"#))), Some(Failure::BadBody));
        let info = |n: usize| bounded(judge(Hook::Connect, ok(&format!(r#"{{"result":{{"info":"{}"}}}}"#, "i".repeat(n)))), 10);
        assert_eq!(failed(info(8)), None, "10 bytes of JSON text");
        assert_eq!(failed(info(9)), Some(Failure::BadBody), "11 bytes");
        assert_eq!(failed(judge(Hook::Connect, ok(&format!(r#"{{"result":{{"user":"{}"}}}}"#, "u".repeat(257))))), Some(Failure::BadBody));
        assert_eq!(failed(judge(Hook::Publish, ok(r#"{"result":{"payload":1,"payload_base64":"AA=="}}"#))), Some(Failure::BadBody));
        let status = judge(Hook::Rpc, Ok(Answer { status: 500, body: bytes::Bytes::new() }));
        assert_eq!(failed(status), Some(Failure::Status(500)));
        assert_eq!(failed(judge(Hook::Rpc, Err(PostError::Timeout))), Some(Failure::Timeout));
    }

    #[test]
    fn a_long_disconnect_reason_is_cut_to_fit_a_close_frame() {
        use crate::codes::close::MAX_REASON_BYTES;
        let long = format!(r#"{{"disconnect":{{"code":4000,"reason":"{}"}}}}"#, "é".repeat(100));
        let HookAnswer::Disconnect { reason, .. } = judge(Hook::Connect, ok(&long)) else { panic!() };
        // The close frame cuts it (ws::frame::close), on a character boundary.
        let frame = crate::ws::frame::close(4000, &reason);
        let sent = std::str::from_utf8(&frame[4..]).unwrap();
        assert!(sent.len() <= MAX_REASON_BYTES && sent.chars().all(|c| c == 'é'), "{sent:?}");
    }
}
