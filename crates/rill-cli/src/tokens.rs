//! `rill token create|list|revoke`: join tokens for daemons.

use std::process::ExitCode;

use rill_proto::coord::{ControlRequest, ControlResponse, TokenInfo};

use crate::access::ControlAccess;

#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Mint a join token for a daemon; it is printed this once.
    Create(CreateArgs),
    /// Show every token: unused, enrolled (machine, key), expired, revoked.
    List(ListArgs),
    /// Revoke a token (again is fine); its daemon is disconnected.
    Revoke(RevokeArgs),
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// Its name (letters, digits, `-`, `_`), e.g. the machine it is for.
    name: String,
    /// How long it may enroll and stay connected: 90s, 30m, 24h, 7d, or none.
    #[arg(long, default_value = "24h")]
    ttl: String,
    /// The only labels its daemon may claim, `k=v,k2=v2` (claiming none
    /// gets them all).
    #[arg(long)]
    labels: Option<String>,
    #[command(flatten)]
    coordinator: ControlAccess,
    /// JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    coordinator: ControlAccess,
    /// JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct RevokeArgs {
    name: String,
    #[command(flatten)]
    coordinator: ControlAccess,
    /// JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Create(args) => create(args),
        TokenCommand::List(args) => list(args),
        TokenCommand::Revoke(args) => revoke(args),
    }
}

fn create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    let ttl = rill_auth::token::parse_ttl(&args.ttl).map_err(anyhow::Error::msg)?;
    let labels = match &args.labels {
        Some(text) => Some(rill_core::parse_labels(text).map_err(|e| anyhow::anyhow!("--labels: {e}"))?),
        None => None,
    };
    let request =
        ControlRequest::TokenCreate { name: args.name, ttl_ms: ttl.map(|ttl| ttl.as_millis() as u64), labels };
    let ControlResponse::TokenCreated { token, info } = crate::remote::request(&args.coordinator, request)? else {
        anyhow::bail!("unexpected reply from the coordinator");
    };
    if args.json {
        println!("{}", serde_json::json!({"token": token, "info": info}));
    } else {
        println!("{token}");
        note!(
            "join token {} ({}): shown only now; give it to the daemon in a 0600 file (--join-token-file) or RILL_JOIN_TOKEN",
            info.name,
            expiry(&info)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn expiry(info: &TokenInfo) -> String {
    match info.expires_ms {
        None => "never expires".into(),
        Some(at) => format!("expires in {}", ago_or_in(at)),
    }
}

/// `3h 20m` from now to `at` (unix ms), or `expired`.
fn ago_or_in(at: u64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let Some(left) = at.checked_sub(now) else { return "0s".into() };
    let secs = left / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {}s", secs / 60, secs % 60),
        3600..86_400 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let ControlResponse::Tokens { tokens } = crate::remote::request(&args.coordinator, ControlRequest::TokenList)?
    else {
        anyhow::bail!("unexpected reply from the coordinator");
    };
    if args.json {
        println!("{}", serde_json::json!({"tokens": tokens}));
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 5]> = tokens
        .iter()
        .map(|t| {
            let state = serde_json::to_value(t.state).ok().and_then(|v| v.as_str().map(str::to_owned));
            [
                t.name.clone(),
                state.unwrap_or_default(),
                t.machine_id.clone().unwrap_or_else(|| "-".into()),
                t.key_fingerprint.clone().unwrap_or_else(|| "-".into()),
                match t.expires_ms {
                    None => "never".into(),
                    Some(at) => ago_or_in(at),
                },
            ]
        })
        .collect();
    crate::remote::print_table(["NAME", "STATE", "MACHINE", "KEY", "EXPIRES IN"], &rows);
    Ok(ExitCode::SUCCESS)
}

fn revoke(args: RevokeArgs) -> anyhow::Result<ExitCode> {
    let request = ControlRequest::TokenRevoke { name: args.name };
    let ControlResponse::TokenRevoked { name, changed, disconnected } =
        crate::remote::request(&args.coordinator, request)?
    else {
        anyhow::bail!("unexpected reply from the coordinator");
    };
    if args.json {
        println!("{}", serde_json::json!({"name": name, "changed": changed, "disconnected": disconnected}));
    } else if !changed {
        println!("token {name} was revoked already");
    } else {
        let gone = disconnected.map(|d| format!("; disconnected daemon {d}")).unwrap_or_default();
        println!("revoked token {name}{gone}");
    }
    Ok(ExitCode::SUCCESS)
}
