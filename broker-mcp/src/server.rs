//! The MCP server: its tools and who is calling them.

use std::sync::Arc;
use std::time::SystemTime;

use broker_core::audit::{EventKind, Severity};
use broker_core::policy::{Action, PolicyRequest};
use broker_core::{Broker, Error, ErrorKind, ManifestEntry, RequestContext, Result, Source};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{RoleServer, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::run::{RunOutput, RunRequest};
use crate::settings::McpConfig;

/// Who is calling: the stdio agent (the local user's word) or a verified bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The agent id policy and the audit log see (`None`: anonymous).
    pub agent: Option<String>,
    /// The agent's tenant, from a verified token (`None`: the config's).
    pub tenant: Option<String>,
    /// How it was identified, for the audit log (`mcp stdio`, `jwt iss=… sub=…`).
    pub described: String,
    /// `jwt` for a verified token; `None` for stdio (policy sees `local`).
    pub method: Option<String>,
    /// The verified identity's attributes (policy sees them as the principal's tags).
    pub attributes: std::collections::BTreeMap<String, String>,
}

impl Identity {
    fn context(&self) -> RequestContext {
        RequestContext {
            agent_id: self.agent.clone(),
            tenant: self.tenant.clone(),
            identity: Some(self.described.clone()),
            identity_method: self.method.clone(),
            attributes: self.attributes.clone(),
            ..RequestContext::new()
        }
    }
}

/// Where callers' identities come from.
#[derive(Debug, Clone)]
enum Mode {
    /// One identity for the whole session (stdio).
    Fixed(Identity),
    /// Each HTTP request carries its [`Identity`] in its extensions (put there by the bearer
    /// token check); a request without one is refused.
    PerRequest,
}

struct Inner {
    broker: Arc<Broker>,
    config: McpConfig,
    mode: Mode,
}

/// The broker's MCP server: `list_credentials`, `run` and (when a credential allows it)
/// `reveal_credential`. Cheap to clone (one per HTTP session).
#[derive(Clone)]
pub struct BrokerMcp {
    inner: Arc<Inner>,
    tool_router: ToolRouter<BrokerMcp>,
}

impl std::fmt::Debug for BrokerMcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerMcp")
            .field("config", &self.inner.config)
            .field("mode", &self.inner.mode)
            .finish()
    }
}

/// `reveal_credential`'s arguments.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevealRequest {
    /// The credential's name (one whose config says `mcp: { reveal: true }`).
    pub name: String,
    /// Why the value is needed (recorded in the audit log).
    #[serde(default)]
    pub reason: Option<String>,
}

/// `list_credentials` takes no arguments.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListRequest {}

const INSTRUCTIONS: &str = "This server holds credentials for you without showing them. \
`list_credentials` names the ones you may use (never their values). `run` executes a \
command (an argv array, no shell) with the credentials you name delivered in its \
environment; its output comes back with every credential value replaced by \
[REDACTED:<name>]. Credential values are never shown to you, except by \
`reveal_credential` for the few the operator marked revealable.";

impl BrokerMcp {
    /// A server for one stdio session: the agent id is `agent` (`--agent`), else `mcp.agent`,
    /// else anonymous — the local user's word, recorded as such.
    pub fn stdio(broker: Arc<Broker>, agent: Option<String>) -> Result<BrokerMcp> {
        let config = McpConfig::from_config(broker.config())?;
        let agent = match agent {
            Some(a) => broker_core::policy::normalize_agent_id(&a)?,
            None => config.agent.clone(),
        };
        let identity = Identity {
            agent,
            tenant: None,
            described: "mcp stdio (agent id as configured by the local user)".into(),
            method: None,
            attributes: Default::default(),
        };
        Self::new(broker, config, Mode::Fixed(identity))
    }

    /// A server whose callers are identified per HTTP request ([`Identity`] in the request's
    /// extensions).
    pub(crate) fn per_request(broker: Arc<Broker>) -> Result<BrokerMcp> {
        let config = McpConfig::from_config(broker.config())?;
        Self::new(broker, config, Mode::PerRequest)
    }

    fn new(broker: Arc<Broker>, config: McpConfig, mode: Mode) -> Result<BrokerMcp> {
        let mut tool_router = Self::tool_router();
        if !broker.config().credentials.iter().any(|c| c.mcp.reveal) {
            tool_router.remove_route("reveal_credential");
        }
        Ok(BrokerMcp {
            inner: Arc::new(Inner {
                broker,
                config,
                mode,
            }),
            tool_router,
        })
    }

    /// The tools this server offers.
    pub fn tool_names(&self) -> Vec<String> {
        self.tool_router
            .list_all()
            .into_iter()
            .map(|t| t.name.to_string())
            .collect()
    }

    fn identity(&self, ctx: &rmcp::service::RequestContext<RoleServer>) -> Result<Identity> {
        match &self.inner.mode {
            Mode::Fixed(identity) => Ok(identity.clone()),
            Mode::PerRequest => ctx
                .extensions
                .get::<axum::http::request::Parts>()
                .and_then(|parts| parts.extensions.get::<Identity>())
                .cloned()
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::AuthenticationFailed,
                        "this request carries no verified identity",
                    )
                }),
        }
    }

    /// Whether policy would let `identity` have `entry` (a dry run: nothing is resolved or
    /// recorded; `run` asks again, for real, with an audit record).
    fn permitted(&self, entry: &ManifestEntry, context: &RequestContext) -> bool {
        let broker = &self.inner.broker;
        let Some(spec) = broker.config().credential(&entry.credential) else {
            return false;
        };
        let config_tenant = broker.config().tenant.clone().unwrap_or_default();
        let tenant = context
            .tenant
            .clone()
            .unwrap_or_else(|| config_tenant.clone());
        let empty: Vec<String> = Vec::new();
        let scope = spec.scope.as_ref();
        let ttl = spec.ttl.map_or(0, |t| t.as_secs());
        let request = PolicyRequest {
            agent_id: context.agent_id.as_deref(),
            agent_tenant: &tenant,
            agent_identity: context.identity_method.as_deref().unwrap_or("local"),
            agent_attributes: &context.attributes,
            action: match spec.source {
                Source::Mint => Action::Mint,
                Source::Resolve => Action::Resolve,
            },
            credential: &spec.name,
            declared: true,
            backend: entry.backend,
            badge: entry.badge.as_str(),
            credential_tenant: spec.tenant.as_deref().unwrap_or(&config_tenant),
            max_ttl: ttl,
            ttl_seconds: ttl,
            scope_actions: scope.map_or(&empty, |s| &s.actions),
            scope_resources: scope.map_or(&empty, |s| &s.resources),
            task_id: None,
            time: SystemTime::now(),
        };
        broker.policy().decide(&request).is_ok_and(|d| d.allowed)
    }

    async fn list(&self, identity: &Identity) -> Result<serde_json::Value> {
        let context = identity.context();
        let manifest = self.inner.broker.manifest()?;
        let mut credentials = Vec::new();
        for entry in &manifest.entries {
            if !self.permitted(entry, &context) {
                continue;
            }
            // Placeholder-mode credentials are for `broker run`'s proxy only.
            let config = self.inner.broker.config();
            if config
                .credential(&entry.credential)
                .is_some_and(|c| c.proxy.is_some())
            {
                continue;
            }
            let revealable = self
                .inner
                .broker
                .config()
                .credential(&entry.credential)
                .is_some_and(|c| c.mcp.reveal);
            let mut row = serde_json::to_value(entry)
                .map_err(|e| Error::internal(format!("cannot describe a credential: {e}")))?;
            if let Some(map) = row.as_object_mut() {
                let allowed = map.remove("allowed").unwrap_or_default();
                map.insert("egress_allowed".into(), allowed);
                map.insert("revealable".into(), revealable.into());
            }
            credentials.push(row);
        }
        Ok(serde_json::json!({
            "agent": identity.agent.as_deref().unwrap_or(broker_core::policy::ANONYMOUS),
            "egress": manifest.egress,
            "credentials": credentials,
        }))
    }

    async fn reveal(&self, identity: &Identity, request: &RevealRequest) -> Result<String> {
        let broker = &self.inner.broker;
        let mut context = identity.context();
        context.purpose = request.reason.clone();
        let spec = broker.config().require_credential(&request.name)?;
        if !spec.mcp.reveal || spec.proxy.is_some() {
            let mut event = broker.context_event(EventKind::Notice, Severity::Warning, &context);
            event.action = Some("reveal".into());
            event.credential = Some(spec.name.clone());
            event.reference = Some(spec.reference.to_string());
            event.decision = Some("denied".into());
            event.outcome = Some("reveal_refused".into());
            event.reason = Some("not marked `mcp: { reveal: true }` in the config".into());
            broker.record_async(&event).await?;
            return Err(Error::new(
                ErrorKind::PolicyDenied,
                format!(
                    "credential `{}` cannot be revealed: its value stays out of the conversation",
                    spec.name
                ),
            )
            .with_hint("use `run` to hand it to a command; an operator can allow revealing it with `mcp: { reveal: true }` in the config"));
        }
        let credential = broker.resolve(&spec.name, &context).await?;
        let mut event = broker.context_event(EventKind::Notice, Severity::Warning, &context);
        event.action = Some("reveal".into());
        event.credential = Some(spec.name.clone());
        event.reference = Some(spec.reference.to_string());
        event.outcome = Some("revealed".into());
        event.reason = Some("mcp reveal_credential: the value was shown to the agent".into());
        // Nothing is shown unless the reveal is on record.
        broker.record_async(&event).await?;
        let text = credential.value().expose_str().map_err(|_| {
            Error::unsupported("reveal").with_hint(format!(
                "credential `{}` is not text; use `run` to hand it to a command",
                spec.name
            ))
        })?;
        Ok(text.to_string())
    }
}

/// A tool error result: the error's one line and its hint. Never a value (broker errors hold
/// names and references only).
fn tool_error(e: &Error) -> CallToolResult {
    let mut text = format!("error: {e}");
    if let Some(hint) = e.hint() {
        text.push_str(&format!("\nhint: {hint}"));
    }
    CallToolResult::error(vec![ContentBlock::text(text)])
}

#[tool_router]
impl BrokerMcp {
    /// The credentials this agent may use.
    #[tool(
        name = "list_credentials",
        description = "List the credentials you may use: name, reference, backend, destinations \
and badge (where a request for it goes), how it is delivered (the environment variable; `file` \
means the variable holds the path of a 0600 file), and whether it is revealable. Values are \
never shown. Pass names from this list to `run`.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_credentials(
        &self,
        Parameters(_): Parameters<ListRequest>,
        ctx: rmcp::service::RequestContext<RoleServer>,
    ) -> CallToolResult {
        let listed = match self.identity(&ctx) {
            Ok(identity) => self.list(&identity).await,
            Err(e) => Err(e),
        };
        match listed {
            Ok(value) => CallToolResult::structured(value),
            Err(e) => tool_error(&e),
        }
    }

    /// Runs a command with credentials delivered.
    #[tool(
        name = "run",
        description = "Run a command with credentials delivered to it, without seeing them. \
`argv` is executed directly (no shell; use [\"sh\", \"-c\", \"...\"] for shell syntax if \
allowed). Each name in `credentials` is checked by policy, recorded in the audit log and \
put in the command's environment (see `list_credentials` for the variable names). Returns \
the exit code and the command's stdout and stderr, in which every credential value and its \
encodings are replaced by [REDACTED:<name>]; values are never shown. The command's process \
group is killed after `timeout_seconds`; output past `max_output_bytes` is dropped \
(`truncated: true`).",
        output_schema = rmcp::handler::server::tool::schema_for_type::<RunOutput>(),
        annotations(destructive_hint = true, open_world_hint = true)
    )]
    async fn run(
        &self,
        Parameters(request): Parameters<RunRequest>,
        ctx: rmcp::service::RequestContext<RoleServer>,
    ) -> CallToolResult {
        let identity = match self.identity(&ctx) {
            Ok(i) => i,
            Err(e) => return tool_error(&e),
        };
        let mut context = identity.context();
        context.purpose = request.reason.clone();
        context.task_id = Some(format!("mcp-run-{}", broker_core::provider::random_id()));
        match crate::run::run(&self.inner.broker, &self.inner.config, &request, &context).await {
            Ok(output) => match serde_json::to_value(&output) {
                Ok(value) => CallToolResult::structured(value),
                Err(e) => tool_error(&Error::internal(format!("cannot encode the result: {e}"))),
            },
            Err(e) => tool_error(&e.0),
        }
    }

    /// Shows a revealable credential's value.
    #[tool(
        name = "reveal_credential",
        description = "Show the value of a credential the operator marked revealable \
(`revealable: true` in `list_credentials`). The reveal is recorded in the audit log. Prefer \
`run`: every other credential value is never shown.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn reveal_credential(
        &self,
        Parameters(request): Parameters<RevealRequest>,
        ctx: rmcp::service::RequestContext<RoleServer>,
    ) -> CallToolResult {
        let revealed = match self.identity(&ctx) {
            Ok(identity) => self.reveal(&identity, &request).await,
            Err(e) => Err(e),
        };
        match revealed {
            Ok(value) => CallToolResult::success(vec![ContentBlock::text(value)]),
            Err(e) => tool_error(&e),
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for BrokerMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("broker", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}
