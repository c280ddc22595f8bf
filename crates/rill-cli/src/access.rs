//! How a command reaches the coordinator: its address, the CA fingerprint
//! it pins, and the admin token, each from the first place that has it:
//! flags, environment, the CLI config (`rill up` writes it), and, for a
//! coordinator on this machine, its own state directory (same user).

use std::path::PathBuf;

use anyhow::Context;
use rill_auth::config::CliConfig;
use rill_auth::dial::Dial;
use rill_auth::{ClusterCa, Fingerprint, Secret};
use rill_coordinator::client::{ClientError, ControlClient};
use rill_proto::coord::DEFAULT_PORT;

/// Where the coordinator is and how to trust it (client commands and the
/// daemon).
#[derive(clap::Args, Clone, Default)]
pub struct CoordinatorAddr {
    /// Coordinator host name or IP [default: the CLI config's current
    /// coordinator, else 127.0.0.1].
    #[arg(long)]
    coordinator_addr: Option<String>,
    /// Coordinator port [default: the current coordinator's, else 6013].
    #[arg(long)]
    coordinator_port: Option<u16>,
    /// The cluster CA's fingerprint (`sha256:…`, printed by the coordinator
    /// and `rill status`) to pin [env: RILL_COORDINATOR_FINGERPRINT; default:
    /// the CLI config, or the local coordinator's state].
    #[arg(long, value_name = "FINGERPRINT")]
    coordinator_fingerprint: Option<String>,
    /// Talk plaintext to a coordinator started with --insecure-plaintext.
    #[arg(long)]
    insecure_plaintext: bool,
}

/// The admin credential of client commands.
#[derive(clap::Args, Clone, Default)]
pub struct ControlAccess {
    #[command(flatten)]
    pub at: CoordinatorAddr,
    /// File with the admin token [env: RILL_TOKEN holds the token itself;
    /// default: the CLI config, or the local coordinator's state].
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
}

pub const FINGERPRINT_ENV: &str = "RILL_COORDINATOR_FINGERPRINT";
pub const TOKEN_ENV: &str = "RILL_TOKEN";
pub const JOIN_TOKEN_ENV: &str = "RILL_JOIN_TOKEN";

/// The CLI config file: `$XDG_CONFIG_HOME/rill/config.json`.
pub fn config_path() -> PathBuf {
    crate::dirs::config_dir().join("config.json")
}

fn load_config() -> anyhow::Result<CliConfig> {
    Ok(CliConfig::load(&config_path())?)
}

fn env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// Whether `host` is this machine's loopback.
fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl CoordinatorAddr {
    /// `host:port`: the flags, else the config's current coordinator, else
    /// the default.
    pub fn host_port(&self) -> String {
        let current = load_config().ok().and_then(|c| c.current);
        let (current_host, current_port) = current
            .as_deref()
            .and_then(|c| c.rsplit_once(':'))
            .map(|(h, p)| (Some(h.to_owned()), p.parse().ok()))
            .unwrap_or((None, None));
        let host = self.coordinator_addr.clone().or(current_host).unwrap_or_else(|| "127.0.0.1".into());
        let port = self.coordinator_port.or(current_port).unwrap_or(DEFAULT_PORT);
        if host.contains(':') && !host.starts_with('[') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
    }

    /// Whether a coordinator was named: by flag, or as the CLI config's
    /// current one (else commands try the default address).
    pub fn is_named(&self) -> bool {
        self.coordinator_addr.is_some()
            || self.coordinator_port.is_some()
            || load_config().ok().and_then(|c| c.current).is_some()
    }

    /// The state directory of a coordinator on this machine, if `addr` is
    /// one here.
    fn local_state(&self, addr: &str) -> Option<PathBuf> {
        let port: u16 = addr.rsplit_once(':')?.1.parse().ok()?;
        is_loopback(rill_auth::dial::host_of(addr)).then(|| crate::dirs::coordinator_state(port))
    }

    /// How to reach the coordinator with `bearer`, the CA pinned.
    pub fn dial(&self, bearer: Option<String>) -> anyhow::Result<Dial> {
        let addr = self.host_port();
        let config = load_config()?;
        let entry = config.coordinators.get(&addr);
        // A fingerprint given explicitly means TLS, whatever a file says.
        let given = self.given_pin()?;
        let local_plaintext = self.local_state(&addr).is_some_and(|d| rill_auth::identity::serves_plaintext(&d));
        let configured_plaintext = entry.is_some_and(|e| e.plaintext);
        if self.insecure_plaintext || (given.is_none() && (local_plaintext || configured_plaintext)) {
            return Ok(Dial { addr, tls: None, bearer });
        }
        let pin = self.fingerprint(&addr, entry.map(|e| e.fingerprint.as_str()))?;
        let tls = rill_auth::tls::client_config(pin, None)?;
        Ok(Dial { addr, tls: Some(tls), bearer })
    }

    /// The fingerprint given by flag or environment, if any.
    fn given_pin(&self) -> anyhow::Result<Option<Fingerprint>> {
        if let Some(text) = &self.coordinator_fingerprint {
            return text.parse().map(Some).map_err(|e| anyhow::anyhow!("--coordinator-fingerprint: {e}"));
        }
        match env(FINGERPRINT_ENV) {
            Some(text) => text.parse().map(Some).map_err(|e| anyhow::anyhow!("{FINGERPRINT_ENV}: {e}")),
            None => Ok(None),
        }
    }

    fn fingerprint(&self, addr: &str, configured: Option<&str>) -> anyhow::Result<Fingerprint> {
        if let Some(pin) = self.given_pin()? {
            return Ok(pin);
        }
        if let Some(text) = configured.filter(|f| !f.is_empty()) {
            return text.parse().with_context(|| format!("{}: coordinator {addr}", config_path().display()));
        }
        let state = self.local_state(addr);
        if let Some(dir) = state.as_deref().filter(|d| d.join(rill_auth::ca::CA_CERT).exists()) {
            return Ok(ClusterCa::fingerprint_in(dir)?);
        }
        if let Some(dir) = &state {
            let port = addr.rsplit_once(':').map_or("", |(_, p)| p);
            anyhow::bail!(
                "cannot reach the coordinator at {addr}: none has run with port {port} on this machine (no {}): \
                 start one with `rill up` or `rill coordinator --port {port}`, or pass --coordinator-fingerprint \
                 for one started with its own --state-dir",
                dir.display()
            );
        }
        let mut looked = vec!["--coordinator-fingerprint".to_owned(), FINGERPRINT_ENV.to_owned()];
        looked.push(config_path().display().to_string());
        looked.extend(state.map(|d| d.join(rill_auth::ca::CA_CERT).display().to_string()));
        anyhow::bail!(
            "no fingerprint to verify the coordinator at {addr} by (looked in {}): pass \
             --coordinator-fingerprint sha256:… as the coordinator printed it at start, or run `rill up`",
            looked.join(", ")
        )
    }
}

/// The admin token and where it came from.
struct Admin {
    secret: Option<Secret>,
    looked: Vec<String>,
    from: Option<String>,
}

impl ControlAccess {
    fn admin(&self, addr: &str) -> anyhow::Result<Admin> {
        let mut looked = Vec::new();
        let found = |secret: Secret, from: String, looked| Ok(Admin { secret: Some(secret), looked, from: Some(from) });
        if let Some(path) = &self.token_file {
            let secret = rill_auth::identity::read_admin(path)?;
            return found(secret, format!("--token-file {}", path.display()), looked);
        }
        looked.push("--token-file".to_owned());
        if let Some(text) = env(TOKEN_ENV) {
            let secret = Secret::from_hex(&text).context("RILL_TOKEN is not an admin token (64 hex digits)")?;
            return found(secret, TOKEN_ENV.to_owned(), looked);
        }
        looked.push(TOKEN_ENV.to_owned());
        let config = load_config()?;
        if let Some(entry) = config.coordinators.get(addr) {
            let secret = Secret::from_hex(&entry.token)
                .with_context(|| format!("{}: the token of {addr} is not 64 hex digits", config_path().display()))?;
            return found(secret, config_path().display().to_string(), looked);
        }
        looked.push(config_path().display().to_string());
        if let Some(dir) = self.at.local_state(addr) {
            let path = dir.join(rill_auth::identity::ADMIN_TOKEN);
            if path.exists() {
                let secret = rill_auth::identity::read_admin(&path)?;
                return found(secret, path.display().to_string(), looked);
            }
            looked.push(path.display().to_string());
        }
        Ok(Admin { secret: None, looked, from: None })
    }

    /// A control connection, or an error that says what was tried.
    pub async fn connect(&self) -> anyhow::Result<ControlClient> {
        let addr = self.at.host_port();
        let admin = self.admin(&addr)?;
        let dial = self.at.dial(admin.secret.as_ref().map(Secret::expose))?;
        match ControlClient::connect(&dial).await {
            Ok(client) => Ok(client),
            Err(e @ ClientError::Unauthorized { .. }) => {
                let tried = match &admin.from {
                    Some(from) => format!("sent the admin token from {from}"),
                    None => format!("found no admin token; looked in {}", admin.looked.join(", ")),
                };
                Err(anyhow::anyhow!("{e} (the CLI {tried}; pass --token-file or set {TOKEN_ENV})"))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn host_port(&self) -> String {
        self.at.host_port()
    }

    /// How to reach the coordinator as its admin, for plain HTTP requests.
    pub fn admin_dial(&self) -> anyhow::Result<Dial> {
        let addr = self.at.host_port();
        let admin = self.admin(&addr)?;
        self.at.dial(admin.secret.as_ref().map(Secret::expose))
    }
}

/// Records `addr` in the CLI config as the current coordinator, with its
/// fingerprint (`None`: plaintext) and admin token.
pub fn remember(addr: &str, fingerprint: Option<Fingerprint>, admin: &Secret) -> anyhow::Result<PathBuf> {
    let path = config_path();
    let mut config = CliConfig::load(&path)?;
    let entry = rill_auth::config::Coordinator {
        fingerprint: fingerprint.map(|f| f.to_string()).unwrap_or_default(),
        token: admin.expose(),
        plaintext: fingerprint.is_none(),
    };
    config.coordinators.insert(addr.to_owned(), entry);
    config.current = Some(addr.to_owned());
    config.save(&path)?;
    Ok(path)
}

/// Removes `addr` from the CLI config.
pub fn forget(addr: &str) -> anyhow::Result<()> {
    let path = config_path();
    let mut config = CliConfig::load(&path)?;
    if config.coordinators.contains_key(addr) || config.current.as_deref() == Some(addr) {
        config.forget(addr);
        config.save(&path)?;
    }
    Ok(())
}

impl ControlAccess {
    /// The coordinator at `host:port`, with what the CLI config holds for it.
    pub fn at(host: &str, port: u16) -> Self {
        let at =
            CoordinatorAddr { coordinator_port: Some(port), coordinator_addr: Some(host.into()), ..Default::default() };
        Self { at, token_file: None }
    }

    /// The coordinator on this machine's `port` (`rill up`).
    pub fn local(port: u16) -> Self {
        let at = CoordinatorAddr {
            coordinator_port: Some(port),
            coordinator_addr: Some("127.0.0.1".into()),
            ..Default::default()
        };
        Self { at, token_file: None }
    }
}

impl CoordinatorAddr {
    /// How the daemon reaches the coordinator (see rill_daemon::access):
    /// its join token, from `join_token_file` or `RILL_JOIN_TOKEN`; its
    /// identities under `cache_dir/identity`.
    pub fn daemon_access(
        &self,
        join_token_file: Option<&std::path::Path>,
        cache_dir: PathBuf,
        machine_id: Option<&str>,
    ) -> anyhow::Result<rill_daemon::access::Access> {
        let join = match (join_token_file, env(JOIN_TOKEN_ENV)) {
            (Some(path), _) => {
                let text = rill_auth::files::read_private(path)?;
                Some(text.parse().with_context(|| format!("--join-token-file {}", path.display()))?)
            }
            (None, Some(text)) => Some(text.parse().with_context(|| JOIN_TOKEN_ENV.to_string())?),
            (None, None) => None,
        };
        let addr = self.host_port();
        let config = load_config()?;
        let entry = config.coordinators.get(&addr);
        let pin = match self.given_pin()? {
            Some(pin) => Some(pin),
            None => entry.map(|e| e.fingerprint.as_str()).filter(|f| !f.is_empty()).map(str::parse).transpose()?,
        };
        Ok(rill_daemon::access::Access {
            local_state: if join.is_some() { None } else { self.local_state(&addr) },
            join,
            identity_root: Some(cache_dir.join("identity")),
            machine_id: machine_id.map(str::to_owned),
            plaintext: self.insecure_plaintext || entry.is_some_and(|e| e.plaintext),
            pin,
            addr,
        })
    }
}
