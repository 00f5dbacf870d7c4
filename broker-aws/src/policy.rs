//! What an `AssumeRole` call sends besides the role: the inline session policy built from a
//! credential's `scope`, the duration from its `ttl`, and the session name.
//!
//! Everything here is checked before any request: an invalid scope or ttl never reaches AWS.

use std::time::Duration;

use broker_core::config::Scope;
use broker_core::{Error, Result};
use serde_json::{Map, Value, json};

/// STS's shortest session.
pub const MIN_TTL: Duration = Duration::from_secs(900);
/// STS's longest session (a role's `MaxSessionDuration` may be lower).
pub const MAX_TTL: Duration = Duration::from_secs(12 * 3600);
/// The session length when a credential has no `ttl` (STS's own default).
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// STS's limit on the plaintext session policy.
pub const MAX_POLICY_CHARS: usize = 2048;

/// `DurationSeconds` for `ttl`: refused outside STS's 900 s..12 h.
pub fn duration_seconds(ttl: Option<Duration>) -> Result<i32> {
    let ttl = ttl.unwrap_or(DEFAULT_TTL);
    if ttl < MIN_TTL || ttl > MAX_TTL {
        return Err(Error::invalid_config(format!(
            "ttl {} is outside what STS issues (15m to 12h)",
            broker_core::config::format_duration(ttl)
        ))
        .with_hint("set `ttl:` between 15m and 12h (the role's MaxSessionDuration may be lower)"));
    }
    i32::try_from(ttl.as_secs()).map_err(|_| Error::internal("ttl does not fit"))
}

/// The inline session policy for `scope`, as compact JSON with sorted keys:
///
/// ```
/// use broker_core::config::Scope;
/// let scope = Scope {
///     actions: vec!["s3:GetObject".into()],
///     resources: vec!["arn:aws:s3:::bucket-a/*".into()],
///     conditions: None,
/// };
/// assert_eq!(
///     broker_aws::session_policy(&scope).unwrap(),
///     r#"{"Statement":[{"Action":["s3:GetObject"],"Effect":"Allow","Resource":["arn:aws:s3:::bucket-a/*"]}],"Version":"2012-10-17"}"#
/// );
/// ```
///
/// A session policy can only narrow what the role allows (AWS intersects the two), so a scope
/// never widens a credential. The scope must name at least one `service:Action` and one
/// resource (an ARN or `*`); `conditions` is an IAM condition block
/// (`{"StringEquals": {"aws:RequestedRegion": "eu-west-1"}}`).
pub fn session_policy(scope: &Scope) -> Result<String> {
    let bad = |msg: String| {
        Error::invalid_config(format!("scope: {msg}"))
            .with_hint("scope: { actions: [\"s3:GetObject\"], resources: [\"arn:aws:s3:::bucket/*\"], conditions: {...} }")
    };
    if scope.actions.is_empty() {
        return Err(bad(
            "`actions` is empty; name the actions this credential may perform".into(),
        ));
    }
    for action in &scope.actions {
        if action == "*" {
            return Err(bad(
                "`*` as an action grants nothing narrower than the role; omit `scope` to use the role as is".into(),
            ));
        }
        if !is_action(action) {
            return Err(bad(format!(
                "`{action}` is not an IAM action (`service:Action`, `*` allowed in the action name)"
            )));
        }
    }
    if scope.resources.is_empty() {
        return Err(bad(
            "`resources` is empty; name the ARNs this credential may touch (or `*`)".into(),
        ));
    }
    for resource in &scope.resources {
        if resource != "*" && !(resource.starts_with("arn:") && resource.split(':').count() >= 6) {
            return Err(bad(format!("`{resource}` is not an ARN or `*`")));
        }
        if resource.chars().any(char::is_control) {
            return Err(bad("a resource contains a control character".into()));
        }
    }
    let mut statement = Map::new();
    statement.insert("Effect".into(), json!("Allow"));
    statement.insert("Action".into(), json!(scope.actions));
    statement.insert("Resource".into(), json!(scope.resources));
    if let Some(conditions) = &scope.conditions {
        check_conditions(conditions).map_err(bad)?;
        statement.insert("Condition".into(), conditions.clone());
    }
    let policy = json!({ "Version": "2012-10-17", "Statement": [Value::Object(statement)] });
    let mut text = String::new();
    canonical_json(&policy, &mut text)?;
    if text.len() > MAX_POLICY_CHARS {
        return Err(bad(format!(
            "the session policy is {} characters; STS accepts at most {MAX_POLICY_CHARS}",
            text.len()
        )));
    }
    Ok(text)
}

/// Compact JSON with object keys sorted, whatever `serde_json`'s map order is in this build.
fn canonical_json(value: &Value, out: &mut String) -> Result<()> {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(&Value::String(key.clone()), out)?;
                out.push(':');
                canonical_json(&map[key], out)?;
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out)?;
            }
            out.push(']');
        }
        scalar => out.push_str(
            &serde_json::to_string(scalar)
                .map_err(|_| Error::internal("session policy encoding failed"))?,
        ),
    }
    Ok(())
}

fn is_action(action: &str) -> bool {
    let Some((service, name)) = action.split_once(':') else {
        return false;
    };
    !service.is_empty()
        && service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'*' || b == b'?')
}

/// `{ Operator: { key: value | [values] } }`.
fn check_conditions(conditions: &Value) -> std::result::Result<(), String> {
    let Value::Object(ops) = conditions else {
        return Err("`conditions` must be a map of condition operators".into());
    };
    if ops.is_empty() {
        return Err("`conditions` is empty".into());
    }
    for (op, body) in ops {
        if op.is_empty() || !op.bytes().all(|b| b.is_ascii_alphanumeric() || b == b':') {
            return Err(format!("`{op}` is not an IAM condition operator"));
        }
        let Value::Object(keys) = body else {
            return Err(format!(
                "condition `{op}` must map condition keys to values"
            ));
        };
        if keys.is_empty() {
            return Err(format!("condition `{op}` is empty"));
        }
        for (key, value) in keys {
            let scalar =
                |v: &Value| matches!(v, Value::String(_) | Value::Bool(_) | Value::Number(_));
            let ok = scalar(value)
                || matches!(value, Value::Array(items) if !items.is_empty() && items.iter().all(scalar));
            if !ok {
                return Err(format!(
                    "condition `{op}.{key}` must be a value or a list of values"
                ));
            }
        }
    }
    Ok(())
}

/// `RoleSessionName` from the agent id and request id, so a CloudTrail entry leads back to the
/// broker's audit record: `AGENT@REQUEST_ID` (`broker@...` without an agent id), restricted
/// to STS's alphabet `[\w+=,.@-]` and 64 characters.
pub fn session_name(agent_id: Option<&str>, request_id: &str) -> String {
    let clean = |s: &str, max: usize| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_+=,.-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .take(max)
            .collect()
    };
    let agent = match agent_id.map(|a| clean(a, 31)) {
        Some(a) if !a.is_empty() => a,
        _ => "broker".to_string(),
    };
    let request = clean(request_id, 64 - agent.len() - 1);
    let request = if request.is_empty() {
        "request".to_string()
    } else {
        request
    };
    let mut name = format!("{agent}@{request}");
    name.truncate(64);
    name
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn scope(actions: &[&str], resources: &[&str], conditions: Option<Value>) -> Scope {
        Scope {
            actions: actions.iter().map(|s| s.to_string()).collect(),
            resources: resources.iter().map(|s| s.to_string()).collect(),
            conditions,
        }
    }

    #[test]
    fn exact_policy_json() {
        let s = scope(
            &["s3:GetObject", "s3:List*"],
            &["arn:aws:s3:::bucket-a/*", "arn:aws:s3:::bucket-a"],
            Some(json!({"StringEquals": {"aws:RequestedRegion": ["eu-west-1"]}})),
        );
        assert_eq!(
            session_policy(&s).unwrap(),
            r#"{"Statement":[{"Action":["s3:GetObject","s3:List*"],"Condition":{"StringEquals":{"aws:RequestedRegion":["eu-west-1"]}},"Effect":"Allow","Resource":["arn:aws:s3:::bucket-a/*","arn:aws:s3:::bucket-a"]}],"Version":"2012-10-17"}"#
        );
    }

    #[test]
    fn invalid_scopes_are_refused() {
        for (s, needle) in [
            (scope(&[], &["*"], None), "actions"),
            (scope(&["*"], &["*"], None), "omit `scope`"),
            (scope(&["GetObject"], &["*"], None), "not an IAM action"),
            (scope(&["s3:Get Object"], &["*"], None), "not an IAM action"),
            (scope(&["s3:GetObject"], &[], None), "resources"),
            (scope(&["s3:GetObject"], &["bucket-a"], None), "not an ARN"),
            (
                scope(&["s3:GetObject"], &["*"], Some(json!(["x"]))),
                "condition operators",
            ),
            (
                scope(
                    &["s3:GetObject"],
                    &["*"],
                    Some(json!({"StringEquals": "x"})),
                ),
                "condition keys",
            ),
            (
                scope(
                    &["s3:GetObject"],
                    &["*"],
                    Some(json!({"StringEquals": {"k": {"nested": 1}}})),
                ),
                "list of values",
            ),
        ] {
            let err = session_policy(&s).unwrap_err();
            assert_eq!(err.kind(), broker_core::ErrorKind::InvalidConfig);
            assert!(err.to_string().contains(needle), "{err}");
        }
        let huge = scope(
            &["s3:GetObject"],
            &[&format!("arn:aws:s3:::{}", "b".repeat(3000))],
            None,
        );
        assert!(
            session_policy(&huge)
                .unwrap_err()
                .to_string()
                .contains("2048")
        );
    }

    #[test]
    fn ttl_limits() {
        assert_eq!(duration_seconds(None).unwrap(), 3600);
        assert_eq!(duration_seconds(Some(MIN_TTL)).unwrap(), 900);
        assert_eq!(duration_seconds(Some(MAX_TTL)).unwrap(), 43200);
        for bad in [Duration::from_secs(899), Duration::from_secs(43201)] {
            let err = duration_seconds(Some(bad)).unwrap_err();
            assert!(err.to_string().contains("15m to 12h"), "{err}");
        }
    }

    #[test]
    fn session_names() {
        assert_eq!(session_name(Some("ci-bot"), "abc123"), "ci-bot@abc123");
        assert_eq!(session_name(None, "abc"), "broker@abc");
        assert_eq!(session_name(Some("a b/c"), "r"), "a-b-c@r");
        let long = session_name(Some(&"x".repeat(100)), &"f".repeat(32));
        assert_eq!(long.len(), 64);
        assert!(long.ends_with(&"f".repeat(32)));
    }
}
