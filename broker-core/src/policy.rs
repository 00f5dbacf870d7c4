//! Who may have which credential: deny unless allowed.
//!
//! Without a `policy:` file the config's credential list is the allowlist: a declared name is
//! allowed, anything else (an undeclared name, a raw reference) is denied.
//!
//! With `policy: FILE.cedar`, every request is a [Cedar](https://www.cedarpolicy.com)
//! authorization against [`SCHEMA`]:
//!
//! - principal `Agent::"<agent id>"` (`"anonymous"` when none is given) with attribute
//!   `tenant` (the config's `tenant:`, `""` when unset);
//! - action `Action::"resolve" | "mint" | "revoke" | "rotate"`;
//! - resource `Credential::"<name>"` with `backend`, `badge` (`local`, `self-hosted`,
//!   `managed-cloud`), `tenant` (the credential's `tenant:`, else the config's) and `max_ttl`
//!   (the configured `ttl` in seconds, 0 when unset). For `revoke` the resource is
//!   `Credential::"<lease id>"` with the backend's name;
//! - context `{ ttl_seconds, scope_actions, scope_resources, task_id, time }` (`time` in Unix
//!   seconds, `task_id` `""` when none).
//!
//! The file is parsed and validated (strict mode) against the schema when the broker loads; an
//! error there is a config error, never an allow. No `permit` matching means deny.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, PolicySet, RestrictedExpression, Schema, ValidationMode, Validator,
};

use crate::{Error, Result};

/// The Cedar schema every policy file is validated against.
pub const SCHEMA: &str = r#"
entity Agent = { tenant: String, identity: String } tags String;
entity Credential = { backend: String, badge: String, tenant: String, max_ttl: Long };
type RequestContext = {
  ttl_seconds: Long,
  scope_actions: Set<String>,
  scope_resources: Set<String>,
  task_id: String,
  time: Long,
};
action "resolve", "mint", "revoke", "rotate" appliesTo {
  principal: [Agent],
  resource: [Credential],
  context: RequestContext,
};
"#;

/// No attributes: for requests whose identity carries none.
pub static NO_ATTRIBUTES: BTreeMap<String, String> = BTreeMap::new();

/// The principal id used when a request names no agent.
pub const ANONYMOUS: &str = "anonymous";

/// The longest agent id, in bytes (after trimming).
pub const AGENT_ID_MAX: usize = 256;

/// The characters an agent id may have besides ASCII letters and digits.
pub const AGENT_ID_PUNCTUATION: &str = "._@:/+-";

/// An agent id in the form policy sees it: trimmed and lower-cased, so case and whitespace
/// tricks cannot dodge a `forbid`. Empty (or whitespace-only) is no agent at all: `None`,
/// which policy sees as [`ANONYMOUS`]. A control character anywhere is an error, and so is
/// anything but ASCII letters, digits and [`AGENT_ID_PUNCTUATION`] (invisible characters,
/// lookalike letters, inner spaces) or an id longer than [`AGENT_ID_MAX`] bytes: ids that look
/// like another cannot get past a `forbid` on it, nor fill the audit log.
pub fn normalize_agent_id(id: &str) -> Result<Option<String>> {
    let refuse = |why: String| Err(Error::new(crate::ErrorKind::PolicyDenied, why));
    if id.chars().any(char::is_control) {
        return refuse("an agent id must not contain control characters".into());
    }
    let id = id.trim();
    if id.is_empty() {
        return Ok(None);
    }
    if id.len() > AGENT_ID_MAX {
        return refuse(format!(
            "an agent id must be at most {AGENT_ID_MAX} bytes, not {}",
            id.len()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !AGENT_ID_PUNCTUATION.contains(*c))
    {
        return refuse(format!(
            "an agent id must not contain {} (only ASCII letters, digits and `{AGENT_ID_PUNCTUATION}`)",
            if c == ' ' {
                "a space".to_string()
            } else {
                format!("U+{:04X}", c as u32)
            }
        ));
    }
    Ok(Some(id.to_ascii_lowercase()))
}

/// Refuses `Agent::"..."` literals that no normalised agent id can equal (upper case, outer
/// whitespace, empty, characters or a length [`normalize_agent_id`] refuses): a `forbid`
/// naming one would silently match nobody.
fn check_agent_literals(policies: &PolicySet) -> std::result::Result<(), String> {
    fn walk(v: &serde_json::Value) -> std::result::Result<(), String> {
        match v {
            serde_json::Value::Object(map) => {
                if map.get("type").and_then(|t| t.as_str()) == Some("Agent")
                    && let Some(id) = map.get("id").and_then(|i| i.as_str())
                {
                    match normalize_agent_id(id) {
                        Ok(Some(n)) if n == id => {}
                        Err(e) if !id.trim().is_empty() => {
                            return Err(format!(
                                "policy: `Agent::{:?}` can never match: {}",
                                crate::grammar::elide(id),
                                e.message()
                            ));
                        }
                        _ => {
                            return Err(format!(
                                "policy: `Agent::{:?}` can never match: agent ids are trimmed and lower-cased, write `Agent::{:?}`",
                                crate::grammar::elide(id),
                                crate::grammar::elide(id.trim()).to_lowercase()
                            ));
                        }
                    }
                }
                map.values().try_for_each(walk)
            }
            serde_json::Value::Array(items) => items.iter().try_for_each(walk),
            _ => Ok(()),
        }
    }
    for policy in policies.policies() {
        if let Ok(json) = policy.to_json() {
            walk(&json)?;
        }
    }
    Ok(())
}

/// What is being asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read a stored secret.
    Resolve,
    /// Mint a short-lived credential.
    Mint,
    /// Revoke a lease.
    Revoke,
    /// Rotate stored key material.
    Rotate,
}

impl Action {
    /// The Cedar action id.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Resolve => "resolve",
            Action::Mint => "mint",
            Action::Revoke => "revoke",
            Action::Rotate => "rotate",
        }
    }
}

/// One authorization question. Holds names and bounds, never values.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyRequest<'a> {
    /// The agent (principal); `None` is [`ANONYMOUS`].
    pub agent_id: Option<&'a str>,
    /// The agent's tenant.
    pub agent_tenant: &'a str,
    /// How the agent was identified: `local` (a CLI's `--agent`, a claim), or a daemon's
    /// verified `unix`, `mtls`, `jwt` (Cedar: `principal.identity`).
    pub agent_identity: &'a str,
    /// Attributes of the verified identity (mapped JWT claims; Cedar: the principal's tags,
    /// `principal.hasTag("team") && principal.getTag("team") == "infra"`).
    pub agent_attributes: &'a BTreeMap<String, String>,
    /// The action.
    pub action: Action,
    /// The credential's name (or the lease id, for revoke).
    pub credential: &'a str,
    /// Whether `credential` is declared in the config (the allowlist).
    pub declared: bool,
    /// The backend serving it.
    pub backend: &'a str,
    /// Its badge.
    pub badge: &'a str,
    /// The credential's tenant.
    pub credential_tenant: &'a str,
    /// The configured ttl, in seconds (0 when unset).
    pub max_ttl: u64,
    /// The requested ttl, in seconds (0 when unset).
    pub ttl_seconds: u64,
    /// The requested scope's actions.
    pub scope_actions: &'a [String],
    /// The requested scope's resources.
    pub scope_resources: &'a [String],
    /// The task id.
    pub task_id: Option<&'a str>,
    /// When the request is made.
    pub time: SystemTime,
}

/// A decision and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Which rule decided: the policy ids (or `@id` annotations), or the allowlist's reason.
    pub reason: String,
}

/// The policy engine: the allowlist, or a validated Cedar policy set.
pub enum Policy {
    /// The config's credential list.
    Allowlist,
    /// A Cedar policy set validated against [`SCHEMA`].
    Cedar(Box<CedarPolicy>),
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Policy::Allowlist => f.write_str("Policy::Allowlist"),
            Policy::Cedar(c) => write!(f, "Policy::Cedar({})", c.path.display()),
        }
    }
}

/// A loaded Cedar policy file.
pub struct CedarPolicy {
    path: PathBuf,
    policies: PolicySet,
    schema: Schema,
    authorizer: Authorizer,
    /// Each policy's `@id` (else its Cedar id), looked up once at load: decisions name them.
    names: HashMap<cedar_policy::PolicyId, String>,
    /// `Agent`, `Credential`, `Action`, parsed once.
    types: [EntityTypeName; 3],
}

fn schema() -> Result<Schema> {
    Schema::from_cedarschema_str(SCHEMA)
        .map(|(s, _)| s)
        .map_err(|e| Error::internal(format!("the built-in Cedar schema is invalid: {e}")))
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// `path:line:col` of the first labelled span of a Cedar diagnostic, else the path.
fn locate(path: &Path, text: &str, diag: &dyn miette::Diagnostic) -> String {
    match diag.labels().and_then(|mut l| l.next()) {
        Some(label) => {
            let (l, c) = line_col(text, label.offset());
            format!("{}:{l}:{c}", path.display())
        }
        None => path.display().to_string(),
    }
}

fn cedar_error(path: &Path, text: &str, message: String, diag: &dyn miette::Diagnostic) -> Error {
    let mut msg = message;
    if let Some(help) = diag.help() {
        msg.push_str(&format!(" ({help})"));
    }
    Error::invalid_config(format!("policy: {msg}"))
        .with_location(locate(path, text, diag))
        .with_hint(
            "see docs/runtime.md for the policy schema (Agent, Credential, actions, context)",
        )
}

impl Policy {
    /// Loads and validates the Cedar file at `path`.
    pub fn load(path: &Path) -> Result<Policy> {
        let text = crate::localfile::read_config_text(path, "policy file").map_err(|e| {
            e.with_hint("`policy:` in the config names a regular file that must exist")
        })?;
        let mut err = Self::from_str(&text, path)?;
        if let Policy::Cedar(c) = &mut err {
            c.path = path.to_path_buf();
        }
        Ok(err)
    }

    /// Parses and validates Cedar `text` as if read from `path`.
    pub fn from_str(text: &str, path: &Path) -> Result<Policy> {
        let policies = PolicySet::from_str(text).map_err(|e| {
            let first = e
                .iter()
                .next()
                .map(|d| d.to_string())
                .unwrap_or_else(|| e.to_string());
            let diag: &dyn miette::Diagnostic = match e.iter().next() {
                Some(d) => d,
                None => &e,
            };
            cedar_error(path, text, first, diag)
        })?;
        check_agent_literals(&policies).map_err(|m| {
            Error::invalid_config(m)
                .with_location(path.display().to_string())
                .with_hint("see docs/runtime.md for how agent ids are normalised")
        })?;
        let schema = schema()?;
        let validator = Validator::new(schema.clone());
        let result = validator.validate(&policies, ValidationMode::Strict);
        if let Some(e) = result.validation_errors().next() {
            return Err(cedar_error(path, text, e.to_string(), e));
        }
        let names = policies
            .policies()
            .map(|p| {
                let name = p
                    .annotation("id")
                    .map_or_else(|| p.id().to_string(), str::to_string);
                (p.id().clone(), name)
            })
            .collect();
        let ty = |kind: &str| {
            EntityTypeName::from_str(kind)
                .map_err(|_| Error::internal(format!("bad Cedar type `{kind}`")))
        };
        Ok(Policy::Cedar(Box::new(CedarPolicy {
            path: path.to_path_buf(),
            policies,
            schema,
            authorizer: Authorizer::new(),
            names,
            types: [ty("Agent")?, ty("Credential")?, ty("Action")?],
        })))
    }

    /// Decides `request`.
    pub fn decide(&self, request: &PolicyRequest<'_>) -> Result<Decision> {
        match self {
            Policy::Allowlist => Ok(match (request.declared, request.action) {
                (true, _) => Decision {
                    allowed: true,
                    reason: "declared in the config (no policy file)".into(),
                },
                (false, Action::Revoke) => Decision {
                    allowed: true,
                    reason: "revocation only narrows access (no policy file)".into(),
                },
                (false, _) => Decision {
                    allowed: false,
                    reason: "not declared in the config (no policy file: the credential list is the allowlist)".into(),
                },
            }),
            Policy::Cedar(c) => c.decide(request),
        }
    }
}

fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
}

fn long(v: u64) -> RestrictedExpression {
    RestrictedExpression::new_long(i64::try_from(v).unwrap_or(i64::MAX))
}

fn strings(v: &[String]) -> RestrictedExpression {
    RestrictedExpression::new_set(
        v.iter()
            .map(|s| RestrictedExpression::new_string(s.clone())),
    )
}

impl CedarPolicy {
    /// The policy file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn decide(&self, r: &PolicyRequest<'_>) -> Result<Decision> {
        let internal = |what: &str, e: &dyn std::fmt::Display| {
            Error::internal(format!("cannot build the Cedar {what}: {e}"))
        };
        let agent_id = match r.agent_id {
            Some(id) => normalize_agent_id(id)?,
            None => None,
        };
        let [agent_type, credential_type, action_type] = &self.types;
        let principal = uid(agent_type, agent_id.as_deref().unwrap_or(ANONYMOUS));
        let resource = uid(credential_type, r.credential);
        let action = uid(action_type, r.action.as_str());
        let agent = Entity::new_with_tags(
            principal.clone(),
            HashMap::from([
                (
                    "tenant".to_string(),
                    RestrictedExpression::new_string(r.agent_tenant.to_string()),
                ),
                (
                    "identity".to_string(),
                    RestrictedExpression::new_string(r.agent_identity.to_string()),
                ),
            ]),
            HashSet::new(),
            r.agent_attributes
                .iter()
                .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone()))),
        )
        .map_err(|e| internal("agent", &e))?;
        let credential = Entity::new(
            resource.clone(),
            HashMap::from([
                (
                    "backend".to_string(),
                    RestrictedExpression::new_string(r.backend.to_string()),
                ),
                (
                    "badge".to_string(),
                    RestrictedExpression::new_string(r.badge.to_string()),
                ),
                (
                    "tenant".to_string(),
                    RestrictedExpression::new_string(r.credential_tenant.to_string()),
                ),
                ("max_ttl".to_string(), long(r.max_ttl)),
            ]),
            HashSet::new(),
        )
        .map_err(|e| internal("credential", &e))?;
        // The entities, context and request have one shape, built right here; debug builds (every
        // test) check each one against the schema, release builds skip that walk per request.
        let schema = cfg!(debug_assertions).then_some(&self.schema);
        let entities = Entities::from_entities([agent, credential], schema)
            .map_err(|e| internal("entities", &e))?;
        let time = r
            .time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let context = Context::from_pairs([
            ("ttl_seconds".to_string(), long(r.ttl_seconds)),
            ("scope_actions".to_string(), strings(r.scope_actions)),
            ("scope_resources".to_string(), strings(r.scope_resources)),
            (
                "task_id".to_string(),
                RestrictedExpression::new_string(r.task_id.unwrap_or("").to_string()),
            ),
            ("time".to_string(), long(time)),
        ])
        .map_err(|e| internal("context", &e))?;
        let request = cedar_policy::Request::new(principal, action, resource, context, schema)
            .map_err(|e| internal("request", &e))?;
        let response = self
            .authorizer
            .is_authorized(&request, &self.policies, &entities);
        let name = |id: &cedar_policy::PolicyId| {
            self.names
                .get(id)
                .cloned()
                .unwrap_or_else(|| id.to_string())
        };
        // Cedar skips a policy whose evaluation fails (an overflow, a missing attribute): a
        // skipped `forbid` would fail open. Any evaluation error denies, naming the policy.
        let failed: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| match e {
                cedar_policy::AuthorizationError::PolicyEvaluationError(e) => {
                    format!("`{}` ({})", name(e.policy_id()), e.inner())
                }
            })
            .collect();
        if !failed.is_empty() {
            return Ok(Decision {
                allowed: false,
                reason: format!("evaluation error in {}; failing closed", failed.join("; ")),
            });
        }
        let allowed = response.decision() == CedarDecision::Allow;
        let ids: Vec<String> = response.diagnostics().reason().map(name).collect();
        let reason = match (allowed, ids.is_empty()) {
            (true, _) => format!("permitted by {}", ids.join(", ")),
            (false, false) => format!("forbidden by {}", ids.join(", ")),
            (false, true) => "no policy permits it (default deny)".into(),
        };
        Ok(Decision { allowed, reason })
    }
}
