//! Command-line definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Credentials for agents and ops tools, resolved just in time, delivered to one task, wiped.
#[derive(Debug, Parser)]
#[command(name = "broker", version, about, propagate_version = true)]
pub struct Cli {
    /// The config file (default: .broker.yml in the working directory or a parent).
    #[arg(long, global = true, env = "BROKER_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// When to colour output and draw the progress spinner: `auto` (a terminal, and
    /// `NO_COLOR` unset), `always`, `never`.
    #[arg(long, global = true, value_name = "WHEN", default_value = "auto")]
    pub color: ColorChoice,

    /// Print only results and errors: no warnings, notes or progress.
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what would leave this machine, and to where, without resolving anything.
    #[command(args_conflicts_with_subcommands = true)]
    Audit(AuditArgs),
    /// Show which backends are compiled in, configured, reachable and authenticated.
    Doctor(JsonArg),
    /// Parse and validate references offline.
    Check(CheckArgs),
    /// Run a command with its credentials delivered, then wipe them.
    Run(RunArgs),
    /// Print one credential's value (to a terminal, or with --reveal).
    Get(GetArgs),
    /// Replace the stored key material behind a credential.
    Rotate(RotateArgs),
    /// Revoke a lease before it expires.
    Revoke(RevokeArgs),
    /// Print an aws-sts:// credential as AWS `credential_process` JSON (for ~/.aws/config).
    CredentialProcess(CredentialProcessArgs),
    /// Run the agent-facing daemon (`serve:` in the config) until SIGTERM or SIGINT.
    #[cfg(feature = "serve")]
    Serve,
    /// Print one credential obtained from a running daemon (to a terminal, or with --reveal).
    #[cfg(feature = "serve")]
    Request(RequestArgs),
    /// Serve the Model Context Protocol to an agent: over stdio (the client starts it), or
    /// streamable HTTP with --listen. Tools list credentials and run commands with them;
    /// values never reach the agent.
    #[cfg(feature = "mcp")]
    Mcp(McpArgs),
    /// Write a commented .broker.yml for this directory, proposing credentials from the sops
    /// and age files in it (or moving a .env file's values into sops with --from-env).
    Init(InitArgs),
    /// Print the JSON Schema of .broker.yml for the backends compiled in (for editors).
    Schema,
    /// Print a shell completion script (`source <(broker completions bash)`).
    Completions(CompletionsArgs),
    /// Write the man pages (`broker.1`, `broker-run.1`, ...) into a directory; `cargo xtask
    /// man` runs it.
    #[command(hide = true)]
    Man(ManArgs),
}

/// How to reach a `broker serve` daemon: `--from` and, over TLS, the client's proof.
#[cfg(feature = "serve")]
#[derive(Debug, Clone, Args)]
pub struct FromArgs {
    /// The daemon: its unix socket path, or `https://HOST:PORT`.
    #[arg(long, env = "BROKER_FROM", value_name = "SOCKET_OR_URL")]
    pub from: Option<String>,
    /// The CA that signed an https:// daemon's certificate (default: the system's roots).
    #[arg(long, env = "BROKER_CA", value_name = "PEM", requires = "from")]
    pub ca: Option<PathBuf>,
    /// A client certificate to present to an https:// daemon (mTLS), with --key.
    #[arg(long, env = "BROKER_CERT", value_name = "PEM", requires_all = ["from", "key"])]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key.
    #[arg(long, env = "BROKER_KEY", value_name = "PEM", requires_all = ["from", "cert"])]
    pub key: Option<PathBuf>,
    /// A file holding a JWT to present as a bearer token (e.g. a projected service-account
    /// token); re-read on every request.
    #[arg(
        long,
        env = "BROKER_TOKEN_FILE",
        value_name = "PATH",
        requires = "from"
    )]
    pub token_file: Option<PathBuf>,
}

#[cfg(feature = "serve")]
impl FromArgs {
    /// The daemon endpoint, if `--from` was given.
    pub fn endpoint(&self) -> Result<Option<broker_serve::client::Endpoint>, broker_core::Error> {
        let Some(from) = &self.from else {
            return Ok(None);
        };
        let options = broker_serve::client::ClientOptions {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            token_file: self.token_file.clone(),
        };
        broker_serve::client::Endpoint::parse(from, &options).map(Some)
    }
}

/// `broker request`.
#[cfg(feature = "serve")]
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// The credential's name in the daemon's config.
    pub name: String,
    /// The daemon and how to prove who we are.
    #[command(flatten)]
    pub daemon: FromArgs,
    /// A shorter lifetime than the configured one (`90s`, `5m`).
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// A narrower scope than the configured one, as JSON:
    /// `{"actions": ["s3:GetObject"], "resources": ["arn:aws:s3:::bucket/reports/*"]}`.
    #[arg(long, value_name = "JSON")]
    pub scope: Option<String>,
    /// Why this is asked for (recorded in the daemon's audit log).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Print even when standard output is not a terminal.
    #[arg(long)]
    pub reveal: bool,
    /// The whole answer as JSON (value included; same --reveal rule).
    #[arg(long)]
    pub json: bool,
}

/// `broker mcp`.
#[cfg(feature = "mcp")]
#[derive(Debug, Args)]
pub struct McpArgs {
    /// The agent's identity over stdio, for policy and the audit log (default: `mcp.agent`).
    #[arg(long, env = "BROKER_AGENT_ID", value_name = "ID", value_parser = AgentId, conflicts_with = "listen")]
    pub agent: Option<String>,
    /// Serve streamable HTTP on this loopback address (`127.0.0.1:8765`; port 0 picks one)
    /// instead of stdio; callers prove who they are with a bearer token (`serve.jwt`).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
}

/// `--json`.
#[derive(Debug, Args)]
pub struct JsonArg {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `broker audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// `verify`; without one, the egress manifest.
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Directory to look for .broker.yml in (and its parents); default: the working directory.
    pub dir: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `broker audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the audit log's hash chain and compare its end with the checkpoint.
    Verify(VerifyArgs),
}

/// `broker audit verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The audit log (default: `audit.path` from the config); several logs (the chains of
    /// several `broker serve` replicas, say) are each verified on their own.
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `broker check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// References to check, e.g. `vault:secret/data/app#token`.
    #[arg(required = true, value_name = "REF")]
    pub references: Vec<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `broker run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Deliver only these credentials (comma-separated names); default: all.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub only: Vec<String>,
    /// The agent's identity, for policy and the audit log.
    #[arg(long, env = "BROKER_AGENT_ID", value_name = "ID", value_parser = AgentId)]
    pub agent: Option<String>,
    /// Obtain the credentials from a `broker serve` daemon (`--from`) instead of a local
    /// config (which is then not read); the daemon decides who the caller is.
    #[cfg(feature = "serve")]
    #[command(flatten)]
    pub daemon: FromArgs,
    /// Do not redact the command's output (recorded in the audit log; the run is refused if
    /// it cannot be recorded).
    #[arg(long)]
    pub no_redact: bool,
    /// Seconds the command gets to exit after a forwarded signal before it is killed.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub grace: u64,
    /// Run the command in a network namespace of its own whose only way out is the run's
    /// egress proxy (refused where user namespaces are unavailable).
    #[cfg(feature = "proxy")]
    #[arg(long)]
    pub isolate: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
}

impl RunArgs {
    /// The grace period after a forwarded signal.
    pub fn grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.grace)
    }
}

/// `broker get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The credential's name in the config.
    pub name: String,
    /// Print even when standard output is not a terminal.
    #[arg(long)]
    pub reveal: bool,
    /// The credential as JSON: value, companions, lease (same --reveal rule).
    #[arg(long)]
    pub json: bool,
    /// The agent's identity, for policy and the audit log.
    #[arg(long, env = "BROKER_AGENT_ID", value_name = "ID", value_parser = AgentId)]
    pub agent: Option<String>,
}

/// `broker rotate`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The credential's name in the config.
    pub name: String,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `broker revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The lease id printed when the credential was minted.
    pub lease: String,
    /// The backend that issued the lease (needed when several can revoke).
    #[arg(long)]
    pub backend: Option<String>,
}

/// `broker credential-process`.
#[derive(Debug, Args)]
pub struct CredentialProcessArgs {
    /// The credential's name in the config (an `aws-sts://` mint credential).
    pub name: String,
    /// The agent's identity, for policy and the audit log.
    #[arg(long, env = "BROKER_AGENT_ID", value_name = "ID", value_parser = AgentId)]
    pub agent: Option<String>,
}

/// `--agent` / `BROKER_AGENT_ID`, normalised as policy sees it (trimmed, lower-cased; only
/// ASCII letters, digits and `._@:/+-`). Empty means anonymous. A refused id is not echoed
/// (clap's usual message would repeat it whole, invisible characters and all): the reason
/// names what is wrong.
#[derive(Clone)]
struct AgentId;

impl clap::builder::TypedValueParser for AgentId {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        let refuse = |reason: &str| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!(
                    "invalid value for '--agent <ID>': {reason}\n\nFor more information, try '--help'.\n"
                ),
            )
            .with_cmd(cmd)
        };
        let raw = value
            .to_str()
            .ok_or_else(|| refuse("an agent id must be UTF-8"))?;
        broker_core::policy::normalize_agent_id(raw)
            .map(Option::unwrap_or_default)
            .map_err(|e| refuse(e.message()))
    }
}

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// Colour and spinner when stderr is a terminal and `NO_COLOR` is unset or empty.
    Auto,
    /// Always (still never on `--json` or `--quiet`).
    Always,
    /// Never.
    Never,
}

/// `broker completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `broker man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// The directory to write the pages into (created if missing).
    #[arg(long, value_name = "DIR", default_value = "target/man")]
    pub out: PathBuf,
}

/// `broker __isolate`: the helper `broker run --isolate` runs in place of the command. Not a
/// subcommand of [`Cli`] (so not in help, completions or man pages): `main` checks for it
/// before parsing.
#[cfg(feature = "proxy")]
#[derive(Debug, Parser)]
#[command(name = "broker __isolate")]
pub struct IsolateArgs {
    /// Only check that the namespaces can be created, then exit (0, or 71 with the reason).
    #[arg(long, conflicts_with_all = ["socket", "port", "command"])]
    pub probe: bool,
    /// The proxy's unix socket (outside the namespace).
    #[arg(long, value_name = "PATH", required_unless_present = "probe")]
    pub socket: Option<PathBuf>,
    /// The port to relay on 127.0.0.1 inside the namespace (the proxy URL's port).
    #[arg(long, value_name = "PORT", required_unless_present = "probe")]
    pub port: Option<u16>,
    /// The command and its arguments.
    #[arg(last = true, value_name = "CMD", required_unless_present = "probe")]
    pub command: Vec<std::ffi::OsString>,
}

/// `broker init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Move this dotenv file's values into a sops-encrypted secrets.enc.yaml (for your sops
    /// age key, or a new one written where sops looks) and reference them.
    #[arg(long, value_name = "FILE")]
    pub from_env: Option<PathBuf>,
    /// With --from-env: overwrite the dotenv file, then delete it.
    #[arg(long, requires = "from_env")]
    pub remove_env: bool,
}
