//! Remote commands through the system's `ssh`.
//!
//! Every call uses `BatchMode=yes` (fail instead of asking for a password),
//! `ConnectTimeout=10`, `StrictHostKeyChecking=accept-new` (a new host is
//! remembered, a changed key is refused), and a control master per host
//! (`ControlMaster=auto`, sockets in a private temporary directory), so the
//! many commands of one `rill cluster` run cost one handshake per host. The
//! destination comes after `--`, so it can never be read as an option (and
//! `cluster.yml` refuses hosts and users starting with `-` anyway). The
//! remote command is `sh -c '<script>'`, quoted here; secrets travel only
//! on stdin, never on a command line.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rill_core::Machine;

/// `ssh` exits with this when it could not run the command at all.
const SSH_FAILED: i32 = 255;

/// Where and as whom to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_file: Option<PathBuf>,
}

impl Target {
    pub fn of(machine: &Machine) -> Self {
        Self {
            host: machine.host.clone(),
            user: machine.user.clone(),
            port: machine.ssh_port,
            identity_file: machine.identity_file.clone(),
        }
    }

    /// `user@host` (or `host`), as messages show it.
    pub fn destination(&self) -> String {
        match &self.user {
            Some(user) => format!("{user}@{}", self.host),
            None => self.host.clone(),
        }
    }
}

/// What a remote command did.
#[derive(Debug, Clone)]
pub struct Output {
    /// The remote command's exit status.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// ssh could not log in or run the command (exit 255): unreachable,
    /// refused key, changed host key, ...
    #[error("cannot reach {destination} over SSH: {reason}")]
    Unreachable { destination: String, reason: String },
    #[error("the command on {destination} did not finish within {limit:?}")]
    Timeout { destination: String, limit: Duration },
    #[error("cannot run ssh: {0}")]
    Spawn(std::io::Error),
    #[error("a host or user starting with `-` is never passed to ssh: {0}")]
    Refused(String),
}

/// Runs commands on cluster machines; closes its control masters when dropped.
pub struct Ssh {
    program: OsString,
    /// `-F FILE` (`RILL_SSH_CONFIG`): another ssh configuration, e.g. with
    /// its own known_hosts file.
    config: Option<PathBuf>,
    control: tempfile::TempDir,
    /// Targets that may have a master to close.
    used: Mutex<Vec<Target>>,
}

impl Ssh {
    /// `ssh` from PATH (or `RILL_SSH`), configured by `RILL_SSH_CONFIG` if set.
    pub fn new() -> Result<Self, SshError> {
        // Short path: a control socket path must fit in 108 bytes.
        let control = tempfile::Builder::new().prefix("rill-ssh-").tempdir_in("/tmp").map_err(SshError::Spawn)?;
        Ok(Self {
            program: std::env::var_os("RILL_SSH").filter(|p| !p.is_empty()).unwrap_or_else(|| "ssh".into()),
            config: std::env::var_os("RILL_SSH_CONFIG").filter(|p| !p.is_empty()).map(PathBuf::from),
            control,
            used: Mutex::new(Vec::new()),
        })
    }

    /// The arguments before the remote command.
    fn args(&self, target: &Target) -> Result<Vec<OsString>, SshError> {
        if target.host.starts_with('-') || target.user.as_deref().is_some_and(|u| u.starts_with('-')) {
            return Err(SshError::Refused(target.destination()));
        }
        let mut args: Vec<OsString> = Vec::new();
        if let Some(config) = &self.config {
            args.extend(["-F".into(), config.into()]);
        }
        let control_path = self.control.path().join("%C");
        for option in [
            "BatchMode=yes".to_owned(),
            "ConnectTimeout=10".to_owned(),
            "StrictHostKeyChecking=accept-new".to_owned(),
            "ControlMaster=auto".to_owned(),
            format!("ControlPath={}", control_path.display()),
            // A master outlives a crashed CLI by at most this.
            "ControlPersist=60".to_owned(),
            "ServerAliveInterval=5".to_owned(),
            "ServerAliveCountMax=3".to_owned(),
            "LogLevel=ERROR".to_owned(),
        ] {
            args.extend(["-o".into(), option.into()]);
        }
        if let Some(port) = target.port {
            args.extend(["-p".into(), port.to_string().into()]);
        }
        if let Some(identity) = &target.identity_file {
            args.extend(["-i".into(), expand_home(identity).into(), "-o".into(), "IdentitiesOnly=yes".into()]);
        }
        if let Some(user) = &target.user {
            args.extend(["-l".into(), user.into()]);
        }
        args.extend(["--".into(), target.host.clone().into()]);
        Ok(args)
    }

    /// Runs `script` with `sh` on `target`, `stdin` written to it, within `limit`.
    pub fn run(&self, target: &Target, script: &str, stdin: &[u8], limit: Duration) -> Result<Output, SshError> {
        let mut command = Command::new(&self.program);
        command.args(self.args(target)?).arg(format!("sh -c {}", quote(script)));
        if let Ok(mut used) = self.used.lock()
            && !used.contains(target)
        {
            used.push(target.clone());
        }
        let output = run_with_limit(command, stdin, limit).map_err(|e| match e {
            RunError::Spawn(e) => SshError::Spawn(e),
            RunError::Timeout => SshError::Timeout { destination: target.destination(), limit },
        })?;
        if output.code == SSH_FAILED {
            let reason = last_line(&output.stderr).unwrap_or("ssh failed without saying why").to_owned();
            return Err(SshError::Unreachable { destination: target.destination(), reason });
        }
        Ok(output)
    }
}

impl Drop for Ssh {
    fn drop(&mut self) {
        let used = self.used.lock().map(|u| u.clone()).unwrap_or_default();
        for target in used {
            let Ok(args) = self.args(&target) else { continue };
            let mut command = Command::new(&self.program);
            // `-O exit` before the destination (the args end with `-- host`).
            command.args(["-O", "exit"]).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
            let _ = run_with_limit(command, b"", Duration::from_secs(5));
        }
    }
}

/// `~/x` as `$HOME/x` (ssh would expand it too, but only in its config).
fn expand_home(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path.to_owned(),
    }
}

fn last_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).rfind(|l| !l.is_empty())
}

/// `text` as one word for a POSIX shell.
pub fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// How long output may still arrive after the command exited.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

enum RunError {
    Spawn(std::io::Error),
    Timeout,
}

/// Runs `command` with `stdin` as its input, collecting output; killed at `limit`.
fn run_with_limit(mut command: Command, stdin: &[u8], limit: Duration) -> Result<Output, RunError> {
    let mut child =
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(RunError::Spawn)?;
    let input = stdin.to_vec();
    let mut writer = child.stdin.take();
    let feeder = std::thread::spawn(move || {
        if let Some(w) = writer.as_mut() {
            let _ = w.write_all(&input);
        }
        // Dropped: the remote side sees the end of its input.
    });
    // Readers hand their text over a channel, so a pipe some other process
    // keeps open (a wrapper's leftover child) cannot hold us past the limit.
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            let _ = tx.send(String::from_utf8_lossy(&text).into_owned());
        });
        rx
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => break None,
        }
    };
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(RunError::Timeout);
    };
    let _ = feeder.join();
    let code = status.code().unwrap_or(SSH_FAILED);
    let collect = |rx: std::sync::mpsc::Receiver<String>| {
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()).max(OUTPUT_GRACE)).unwrap_or_default()
    };
    Ok(Output { code, stdout: collect(stdout), stderr: collect(stderr) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_a_shell() {
        for text in ["plain", "it's", "a b  c", "$(touch /x) `y` \"z\" \\ ; |", "'", ""] {
            let out = Command::new("sh").arg("-c").arg(format!("printf %s {}", quote(text))).output().unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), text);
        }
    }

    fn target(host: &str, user: Option<&str>) -> Target {
        Target {
            host: host.into(),
            user: user.map(Into::into),
            port: Some(2222),
            identity_file: Some("~/.ssh/k".into()),
        }
    }

    #[test]
    fn the_destination_comes_last_after_a_double_dash_with_the_safety_options() {
        let ssh = Ssh::new().unwrap();
        let args: Vec<String> =
            ssh.args(&target("h1", Some("robot"))).unwrap().into_iter().map(|a| a.into_string().unwrap()).collect();
        let joined = args.join(" ");
        for needed in ["BatchMode=yes", "ConnectTimeout=10", "StrictHostKeyChecking=accept-new", "ControlMaster=auto"] {
            assert!(joined.contains(needed), "{joined}");
        }
        assert_eq!(&args[args.len() - 2..], ["--", "h1"]);
        assert!(joined.contains("-p 2222") && joined.contains("-l robot"), "{joined}");
        assert!(!joined.contains("~/"), "the identity file is expanded: {joined}");
        for (host, user) in [("-oProxyCommand=x", None), ("h", Some("-l"))] {
            assert!(matches!(ssh.args(&target(host, user)), Err(SshError::Refused(_))));
        }
    }

    #[test]
    fn a_command_that_outlives_its_limit_is_killed() {
        let mut command = Command::new("sh");
        command.args(["-c", "sleep 5"]);
        let started = Instant::now();
        assert!(matches!(run_with_limit(command, b"", Duration::from_millis(200)), Err(RunError::Timeout)));
        assert!(started.elapsed() < Duration::from_secs(3));
        let mut command = Command::new("sh");
        command.args(["-c", "cat; echo err >&2; exit 3"]);
        let out = run_with_limit(command, b"in", Duration::from_secs(5)).ok().unwrap();
        assert_eq!((out.code, out.stdout.as_str(), out.stderr.as_str()), (3, "in", "err\n"));
        // A leftover child that keeps stdout open does not hold the caller.
        let mut command = Command::new("sh");
        command.args(["-c", "echo early; sleep 5 & exit 0"]);
        let started = Instant::now();
        let out = run_with_limit(command, b"", Duration::from_millis(500)).ok().unwrap();
        assert_eq!(out.code, 0);
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    }
}
