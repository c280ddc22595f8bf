//! A machine's daemon as `rill cluster up` runs it: the scripts that start,
//! find and stop it over SSH.
//!
//! Everything lives in one directory per coordinator port and machine id on
//! the remote host, `${XDG_STATE_HOME:-$HOME/.local/state}/rill/cluster-<port>-<id>/`
//! (0700): `join.token` (0600, written from stdin), `daemon.pid`,
//! `daemon.log` (the daemon's own messages: registrations, reconnects,
//! errors; node output goes only to the coordinator, for `rill logs`; the
//! previous start's log is kept as `daemon.log.1`), and `cache/` (the
//! daemon's key and certificate). `cluster down` removes it.

use std::net::IpAddr;

use crate::ssh::quote;

/// The directory as a shell expression (`$HOME` expands remotely).
fn dir(port: u16, machine_id: &str) -> String {
    format!("\"${{XDG_STATE_HOME:-$HOME/.local/state}}/rill/cluster-{port}-\"{}", quote(machine_id))
}

/// Shell functions: `ours PID` (a running `rill daemon` for this machine,
/// not a reused pid), `stop_pid PID` (SIGTERM, SIGKILL after the grace;
/// prints `stopped=PID` or `killed=PID`).
fn functions(machine_id: &str) -> String {
    format!(
        r#"ours() {{ [ -n "$1" ] && kill -0 "$1" 2>/dev/null && tr '\0' ' ' < /proc/"$1"/cmdline 2>/dev/null | grep -qF -- {pattern}; }}
stop_pid() {{
  kill -TERM "$1" 2>/dev/null || true
  i=0
  while ours "$1" && [ $i -lt {ticks} ]; do sleep 0.1; i=$((i+1)); done
  if ours "$1"; then kill -KILL "$1"; echo "killed=$1"; else echo "stopped=$1"; fi
}}"#,
        pattern = quote(&format!(" daemon --machine-id {machine_id} ")),
        ticks = STOP_GRACE_SECS * 10,
    )
}

/// What the daemon is started with.
#[derive(Debug, Clone)]
pub struct DaemonLaunch<'a> {
    /// Absolute path of `rill` on the machine (from the preflight).
    pub rill: &'a str,
    pub machine_id: &'a str,
    pub coordinator: IpAddr,
    pub port: u16,
    /// `key=value,...` (already validated: no commas in values).
    pub labels: &'a str,
}

/// Starts the daemon unless one runs already with these settings (one with
/// other settings, say an older coordinator address, is stopped first); the
/// join token is the script's stdin. Prints `running=PID` or `started=PID`.
pub fn start_script(launch: &DaemonLaunch) -> String {
    let addr = match launch.coordinator {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    };
    let settings = format!(
        " daemon --machine-id {} --coordinator-addr {addr} --coordinator-port {} --labels {} ",
        launch.machine_id, launch.port, launch.labels
    );
    format!(
        r#"set -e
umask 077
d={d}
mkdir -p "$d"
{functions}
pid=$(cat "$d/daemon.pid" 2>/dev/null || true)
if ours "$pid"; then
  if tr '\0' ' ' < /proc/"$pid"/cmdline | grep -qF -- {settings}; then cat > /dev/null; echo "running=$pid"; exit 0; fi
  stop_pid "$pid" > /dev/null
fi
cat > "$d/join.token.new"
mv "$d/join.token.new" "$d/join.token"
if [ -f "$d/daemon.log" ]; then mv "$d/daemon.log" "$d/daemon.log.1"; fi
nohup {rill} daemon --machine-id {id} --coordinator-addr {addr} --coordinator-port {port} --labels {labels} --join-token-file "$d/join.token" --cache-dir "$d/cache" --no-node-output > "$d/daemon.log" 2>&1 < /dev/null &
echo $! > "$d/daemon.pid"
echo "started=$!"
"#,
        d = dir(launch.port, launch.machine_id),
        functions = functions(launch.machine_id),
        settings = quote(&settings),
        rill = quote(launch.rill),
        id = quote(launch.machine_id),
        addr = quote(&addr),
        port = launch.port,
        labels = quote(launch.labels),
    )
}

/// Lines of the daemon's log shown when it failed.
pub const LOG_TAIL_LINES: usize = 15;

/// Prints `alive=yes|no` and the end of the daemon's log.
pub fn probe_script(port: u16, machine_id: &str) -> String {
    format!(
        r#"d={d}
{functions}
pid=$(cat "$d/daemon.pid" 2>/dev/null || true)
if ours "$pid"; then echo "alive=yes"; else echo "alive=no"; fi
tail -n {LOG_TAIL_LINES} "$d/daemon.log" 2>/dev/null || true
"#,
        d = dir(port, machine_id),
        functions = functions(machine_id)
    )
}

/// Seconds a daemon gets to stop its nodes after SIGTERM before SIGKILL.
pub const STOP_GRACE_SECS: u32 = 15;

/// Stops the daemon (SIGTERM: it stops its nodes and tells the coordinator;
/// SIGKILL after the grace) and removes its pid file; the token and
/// identity stay until [`purge_script`] (once the token is revoked).
/// Prints `stopped=PID`, `killed=PID` or `not_running`.
pub fn stop_script(port: u16, machine_id: &str) -> String {
    format!(
        r#"d={d}
{functions}
pid=$(cat "$d/daemon.pid" 2>/dev/null || true)
if ours "$pid"; then stop_pid "$pid"; else echo "not_running"; fi
rm -f "$d/daemon.pid"
"#,
        d = dir(port, machine_id),
        functions = functions(machine_id),
    )
}

/// Removes the machine's directory (its token was revoked: the token and
/// identity are useless now).
pub fn purge_script(port: u16, machine_id: &str) -> String {
    format!("rm -rf {}\necho purged\n", dir(port, machine_id))
}

/// The `key=value` lines of a script's output.
pub fn field<'a>(output: &'a str, key: &str) -> Option<&'a str> {
    output.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// Runs a script here with `sh`, HOME in a temporary directory.
    fn sh(script: &str, home: &std::path::Path, stdin: &str) -> String {
        use std::io::Write;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("HOME", home)
            .env_remove("XDG_STATE_HOME")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    }

    /// A stand-in for `rill` (named as such): a shell script that sleeps
    /// with the daemon's command line, to test the scripts' process
    /// handling without a coordinator.
    #[test]
    fn start_is_idempotent_keeps_the_token_private_and_stop_cleans_up() {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().unwrap();
        let fake = home.path().join("fake-rill");
        // Not `exec sleep`: the process must keep the daemon's command line.
        std::fs::write(&fake, "#!/bin/sh\ntrap 'exit 0' TERM\nwhile :; do sleep 0.1; done\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let launch = DaemonLaunch {
            rill: fake.to_str().unwrap(),
            machine_id: "m1",
            coordinator: "10.0.0.1".parse().unwrap(),
            port: 6013,
            labels: "gpu=true",
        };
        let out = sh(&start_script(&launch), home.path(), "rill1.m1.secret.fp\n");
        let pid = field(&out, "started").unwrap_or_else(|| panic!("{out}")).to_owned();
        let d = home.path().join(".local/state/rill/cluster-6013-m1");
        let token = d.join("join.token");
        assert_eq!(std::fs::read_to_string(&token).unwrap(), "rill1.m1.secret.fp\n");
        assert_eq!(std::fs::metadata(&token).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o700);
        let again = sh(&start_script(&launch), home.path(), "other\n");
        assert_eq!(field(&again, "running"), Some(pid.as_str()), "{again}");
        assert_eq!(std::fs::read_to_string(&token).unwrap(), "rill1.m1.secret.fp\n", "a running daemon's token stays");
        assert!(sh(&probe_script(6013, "m1"), home.path(), "").contains("alive=yes"));
        // Other settings (a new coordinator address): the old daemon is replaced.
        let moved = DaemonLaunch { coordinator: "10.0.0.9".parse().unwrap(), ..launch.clone() };
        let replaced = sh(&start_script(&moved), home.path(), "rill1.m1.new.fp\n");
        let new_pid = field(&replaced, "started").unwrap_or_else(|| panic!("{replaced}")).to_owned();
        assert_ne!(new_pid, pid, "{replaced}");
        assert_eq!(std::fs::read_to_string(&token).unwrap(), "rill1.m1.new.fp\n");
        let stopped = sh(&stop_script(6013, "m1"), home.path(), "");
        assert_eq!(field(&stopped, "stopped"), Some(new_pid.as_str()), "{stopped}");
        assert!(token.exists() && !d.join("daemon.pid").exists(), "the token stays, the pid goes");
        assert_eq!(sh(&stop_script(6013, "m1"), home.path(), "").trim(), "not_running");
        assert!(sh(&probe_script(6013, "m1"), home.path(), "").contains("alive=no"));
        assert_eq!(sh(&purge_script(6013, "m1"), home.path(), "").trim(), "purged");
        assert!(!d.exists(), "the machine's directory is gone");
    }
}
