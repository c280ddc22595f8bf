//! Where rill keeps files on this machine (XDG base directories).

use std::path::PathBuf;

/// `$VAR`, else `~/FALLBACK`, else the current directory; then `rill`.
fn xdg(var: &str, fallback: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(fallback)))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("rill")
}

/// Persistent data (the coordinator's store): `$XDG_DATA_HOME/rill`, else
/// `~/.local/share/rill`.
pub fn data_dir() -> PathBuf {
    xdg("XDG_DATA_HOME", ".local/share")
}

/// Pids and logs of `rill up`: `$RILL_STATE_DIR`, else
/// `$XDG_STATE_HOME/rill`, else `~/.local/state/rill`.
pub fn state_dir() -> PathBuf {
    match std::env::var_os("RILL_STATE_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => dir.into(),
        None => xdg("XDG_STATE_HOME", ".local/state"),
    }
}

/// The coordinator's default store: one file per port, so coordinators on
/// different ports (two `rill up`) never share one.
pub fn default_store(port: u16) -> PathBuf {
    data_dir().join(format!("coordinator-{port}.redb"))
}

/// What can be made again (node sources cloned from git):
/// `$XDG_CACHE_HOME/rill`, else `~/.cache/rill`.
pub fn cache_dir() -> PathBuf {
    xdg("XDG_CACHE_HOME", ".cache")
}

/// The CLI's configuration: `$XDG_CONFIG_HOME/rill`, else `~/.config/rill`.
pub fn config_dir() -> PathBuf {
    xdg("XDG_CONFIG_HOME", ".config")
}

/// The default state directory of the coordinator on `port` (its CA and
/// admin token): `$XDG_DATA_HOME/rill/coordinator-PORT`.
pub fn coordinator_state(port: u16) -> PathBuf {
    data_dir().join(format!("coordinator-{port}"))
}

/// A daemon's default cache directory (its key and certificate):
/// `$XDG_STATE_HOME/rill/daemon-MACHINE` (`daemon` without a machine id).
pub fn daemon_cache(machine_id: Option<&str>) -> PathBuf {
    // (A machine id is only a name here: nothing in it can leave the directory.)
    let safe = |id: &str| id.replace(|c: char| !(c.is_ascii_alphanumeric() || "_.-".contains(c)), "_");
    let name = machine_id.map_or_else(|| "daemon".to_owned(), |id| format!("daemon-{}", safe(id)));
    xdg("XDG_STATE_HOME", ".local/state").join(name)
}
