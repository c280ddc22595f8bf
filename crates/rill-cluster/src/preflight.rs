//! What a machine has, found with one remote command, and what each
//! `rill cluster` command needs of it. Every gap says what to do.

use std::fmt;

/// The remote half: `key=value` lines. sudo is probed as the harness notes
/// found it behaves: `command -v sudo` first (missing), then `sudo -n true`
/// (a password or a refusal; a warning such as "unable to resolve host"
/// with status 0 is not a failure).
pub const SCRIPT: &str = r#"echo "os=$(uname -s)"
echo "arch=$(uname -m)"
if p=$(command -v rill 2>/dev/null); then
  echo "rill=$p"
  echo "version=$("$p" --version 2>&1 | head -n 1)"
fi
if command -v sudo >/dev/null 2>&1; then
  if out=$(sudo -n true 2>&1); then echo "sudo=ok"; else echo "sudo=refused $(printf %s "$out" | tail -n 1)"; fi
else
  echo "sudo=missing"
fi
if [ -d /run/systemd/system ]; then echo "systemd=yes"; else echo "systemd=no"; fi
"#;

/// What the preflight found on one machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Facts {
    /// `uname -s`: `Linux`, `Darwin`, ...
    pub os: String,
    /// `uname -m`.
    pub arch: String,
    /// Where `rill` is on the PATH of a non-interactive SSH session.
    pub rill: Option<String>,
    /// The first line `rill --version` printed there (`rill 0.1.0`).
    pub version: Option<String>,
    pub sudo: Sudo,
    pub systemd: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum Sudo {
    /// `sudo -n` works.
    Ok,
    /// `sudo` is not installed.
    #[default]
    Missing,
    /// sudo refused without a password: its last line of explanation.
    Refused(String),
}

impl Facts {
    /// Parses what [`SCRIPT`] printed; unknown lines are ignored.
    pub fn parse(text: &str) -> Facts {
        let mut facts = Facts::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else { continue };
            let value = value.trim().to_owned();
            match key {
                "os" => facts.os = value,
                "arch" => facts.arch = value,
                "rill" if !value.is_empty() => facts.rill = Some(value),
                "version" => facts.version = Some(value),
                "sudo" => {
                    facts.sudo = match value.split_once(' ') {
                        _ if value == "ok" => Sudo::Ok,
                        _ if value == "missing" => Sudo::Missing,
                        Some(("refused", why)) => Sudo::Refused(why.trim().to_owned()),
                        _ => Sudo::Refused(String::new()),
                    }
                }
                "systemd" => facts.systemd = value == "yes",
                _ => {}
            }
        }
        facts
    }

    /// `os/arch` in lower case, as daemons report their platform.
    pub fn platform(&self) -> String {
        format!("{}/{}", self.os.to_lowercase(), self.arch)
    }

    /// Every gap between what this machine has and what `needs` asks,
    /// against the local rill's `--version` line.
    pub fn gaps(&self, needs: Needs, local_version: &str) -> Vec<Gap> {
        let mut gaps = Vec::new();
        if self.os != "Linux" {
            gaps.push(Gap::NotLinux { os: self.os.clone() });
            return gaps;
        }
        match (&self.rill, &self.version) {
            (None, _) => gaps.push(Gap::NoRill),
            (Some(path), Some(version)) if version.trim() != local_version.trim() && needs.same_version => gaps
                .push(Gap::OtherVersion { path: path.clone(), remote: version.clone(), local: local_version.into() }),
            _ => {}
        }
        if needs.sudo {
            match &self.sudo {
                Sudo::Ok => {}
                Sudo::Missing => gaps.push(Gap::NoSudo),
                Sudo::Refused(why) => gaps.push(Gap::SudoRefused { why: why.clone() }),
            }
        }
        if needs.systemd && !self.systemd {
            gaps.push(Gap::NoSystemd);
        }
        gaps
    }
}

/// What a command needs of every machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// The same rill version as here (what starting a daemon needs).
    pub same_version: bool,
    /// Passwordless sudo (systemd units).
    pub sudo: bool,
    pub systemd: bool,
}

impl Needs {
    /// `cluster up`: daemons run as the SSH user, no privileges.
    pub const UP: Needs = Needs { same_version: true, sudo: false, systemd: false };
    /// Everything any command needs: what `cluster check --ssh` reports.
    pub const ALL: Needs = Needs { same_version: true, sudo: true, systemd: true };
}

/// Something a machine lacks, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gap {
    NotLinux { os: String },
    NoRill,
    OtherVersion { path: String, remote: String, local: String },
    NoSudo,
    SudoRefused { why: String },
    NoSystemd,
}

impl Gap {
    /// What needs it, when not every command does (`cluster check --ssh`
    /// reports every gap).
    pub fn needed_by(&self) -> Option<&'static str> {
        match self {
            Gap::NoSudo | Gap::SudoRefused { .. } | Gap::NoSystemd => {
                Some("daemons as systemd services; `rill cluster up` does not need it")
            }
            _ => None,
        }
    }

    /// A stable name for `--json`.
    pub fn kind(&self) -> &'static str {
        match self {
            Gap::NotLinux { .. } => "not_linux",
            Gap::NoRill => "no_rill",
            Gap::OtherVersion { .. } => "other_version",
            Gap::NoSudo => "no_sudo",
            Gap::SudoRefused { .. } => "sudo_refused",
            Gap::NoSystemd => "no_systemd",
        }
    }
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gap::NotLinux { os } => write!(f, "the machine runs {os}; rill daemons run on Linux only"),
            Gap::NoRill => write!(
                f,
                "`rill` is not on the PATH of a non-interactive SSH session; install the same rill as here \
                 (e.g. into /usr/local/bin)"
            ),
            Gap::OtherVersion { path, remote, local } => write!(
                f,
                "{path} is `{remote}`, this machine's is `{local}`; install the same version on both (`rill \
                 cluster upgrade` rolls a binary out to installed services)"
            ),
            Gap::NoSudo => write!(f, "sudo is not installed; install it and allow this user passwordless sudo"),
            Gap::SudoRefused { why } => write!(
                f,
                "sudo needs a password or refuses this user ({}); allow it with NOPASSWD in /etc/sudoers.d/",
                if why.is_empty() { "no reason given" } else { why }
            ),
            Gap::NoSystemd => write!(f, "systemd is not the init system (no /run/systemd/system)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_runs_here_and_parses() {
        let out = std::process::Command::new("sh").arg("-c").arg(SCRIPT).output().unwrap();
        let facts = Facts::parse(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(facts.os, "Linux");
        assert!(!facts.arch.is_empty());
        assert!(facts.platform().starts_with("linux/"));
    }

    #[test]
    fn each_gap_is_found_and_says_what_to_do() {
        let good = "os=Linux\narch=x86_64\nrill=/usr/local/bin/rill\nversion=rill 0.1.0\nsudo=ok\nsystemd=yes\n";
        assert_eq!(Facts::parse(good).gaps(Needs::ALL, "rill 0.1.0"), []);
        let text = "os=Linux\narch=x86_64\nsudo=refused sudo: a password is required\nsystemd=no\n";
        let gaps = Facts::parse(text).gaps(Needs::ALL, "rill 0.1.0");
        assert_eq!(gaps.iter().map(Gap::kind).collect::<Vec<_>>(), ["no_rill", "sudo_refused", "no_systemd"]);
        assert!(gaps[1].to_string().contains("a password is required"), "{}", gaps[1]);
        assert_eq!(Facts::parse(text).gaps(Needs::UP, "rill 0.1.0").len(), 1, "up needs neither sudo nor systemd");
        let other = "os=Linux\nrill=/usr/bin/rill\nversion=rill 0.0.9\nsudo=missing\n";
        let gaps = Facts::parse(other).gaps(Needs::UP, "rill 0.1.0");
        assert_eq!(gaps.len(), 1);
        let text = gaps[0].to_string();
        assert!(text.contains("rill 0.0.9") && text.contains("rill 0.1.0") && text.contains("same version"), "{text}");
        let mac = Facts::parse("os=Darwin\narch=arm64\n").gaps(Needs::UP, "rill 0.1.0");
        assert_eq!(mac.iter().map(Gap::kind).collect::<Vec<_>>(), ["not_linux"]);
    }
}
