//! A machine's daemon as a systemd service (`rill cluster install`): the
//! unit, and the scripts that install and uninstall it over SSH.
//!
//! - unit: `/etc/systemd/system/rill-daemon-<id>.service`;
//! - join token: `/etc/rill/<id>.token` (root, 0600), handed to the daemon
//!   with `LoadCredential=` (the service sees a 0400 copy in
//!   `$CREDENTIALS_DIRECTORY`; the token is never in the unit);
//! - state (key, certificate): `/var/lib/rill/<id>` (`StateDirectory=`,
//!   0700, owned by the service's user).
//!
//! Every privileged step runs with `sudo -n` unless the SSH user is root.
//! Each step prints `step=NAME ok` or `step=NAME failed`, so a failure is
//! reported by name (uninstall runs every step and reports each).

use std::net::IpAddr;

use crate::ssh::quote;

/// The unit's name for machine `id`.
pub fn unit_name(machine_id: &str) -> String {
    format!("rill-daemon-{machine_id}.service")
}

pub fn unit_path(machine_id: &str) -> String {
    format!("/etc/systemd/system/{}", unit_name(machine_id))
}

pub fn token_path(machine_id: &str) -> String {
    format!("/etc/rill/{machine_id}.token")
}

pub fn state_dir(machine_id: &str) -> String {
    format!("/var/lib/rill/{machine_id}")
}

/// Exit codes of `rill daemon` that mean "refused for good" (see `rill
/// daemon --help`): restarting cannot help, so systemd does not.
const PERMANENT_EXITS: &str = "2 3 4 5 6 7 8 9";

/// What the service runs.
#[derive(Debug, Clone)]
pub struct ServiceSpec<'a> {
    /// Absolute path of `rill` on the machine.
    pub rill: &'a str,
    pub machine_id: &'a str,
    pub coordinator: IpAddr,
    pub port: u16,
    /// `key=value,...`.
    pub labels: &'a str,
    /// `User=`.
    pub user: &'a str,
}

/// One argument of an `ExecStart=` line: double-quoted, with systemd's
/// specifiers (`%`) and variables (`$`) taken literally.
fn systemd_arg(arg: &str) -> String {
    let escaped = arg.replace('\\', "\\\\").replace('"', "\\\"").replace('%', "%%").replace('$', "$$");
    format!("\"{escaped}\"")
}

/// The unit file.
pub fn unit(spec: &ServiceSpec) -> String {
    let addr = match spec.coordinator {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    };
    let port = spec.port.to_string();
    let state = state_dir(spec.machine_id);
    let args = [
        spec.rill,
        "daemon",
        "--machine-id",
        spec.machine_id,
        "--coordinator-addr",
        &addr,
        "--coordinator-port",
        &port,
        "--labels",
        spec.labels,
        "--cache-dir",
        &state,
        "--quiet",
    ];
    let exec: Vec<String> = args.iter().map(|a| systemd_arg(a)).collect();
    format!(
        "# Written by `rill cluster install`; `rill cluster uninstall` removes it.\n\
         [Unit]\n\
         Description=rill daemon ({id})\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         User={user}\n\
         ExecStart={exec} --join-token-file ${{CREDENTIALS_DIRECTORY}}/join-token\n\
         LoadCredential=join-token:{token}\n\
         StateDirectory=rill/{id}\n\
         StateDirectoryMode=0700\n\
         # SIGTERM to the daemon only: it stops its nodes in order and tells\n\
         # the coordinator (so they come back where it returns); then SIGKILL to all.\n\
         KillMode=mixed\n\
         TimeoutStopSec={STOP_TIMEOUT_SECS}\n\
         Restart=on-failure\n\
         RestartSec=5\n\
         RestartPreventExitStatus={PERMANENT_EXITS}\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        id = spec.machine_id,
        user = spec.user,
        exec = exec.join(" "),
        token = token_path(spec.machine_id),
    )
}

/// `sudo -n` unless root; the step helper; and `stop_unit`, which prints
/// `killed=1` when systemd had to SIGKILL the daemon because it did not
/// stop within `TimeoutStopSec` of SIGTERM (its nodes were not stopped in
/// order: worth telling, and a test can see it).
const PRELUDE: &str = r#"if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi
step() { name=$1; shift; if "$@"; then echo "step=$name ok"; else echo "step=$name failed"; return 1; fi; }
stop_unit() { $SUDO systemctl stop "$1" || return 1; [ "$($SUDO systemctl show -p Result --value "$1" 2>/dev/null)" != timeout ] || echo "killed=1"; }
"#;

/// Seconds systemd gives the daemon between SIGTERM and SIGKILL.
pub const STOP_TIMEOUT_SECS: u32 = 30;

/// Installs (or updates) the service and (re)starts it; the join token is
/// the script's stdin. Stops at the first failed step.
pub fn install_script(spec: &ServiceSpec) -> String {
    let id = spec.machine_id;
    format!(
        r#"set -e
{PRELUDE}umask 077
step token sh -c '$0 install -d -m 0755 /etc/rill && $0 sh -c "umask 077; cat > $1.new && mv $1.new $1"' "$SUDO" {token}
step unit sh -c 'printf %s "$2" | $0 tee $1.new > /dev/null && $0 chmod 644 $1.new && $0 mv $1.new $1' "$SUDO" {unit_path} {unit}
step daemon-reload $SUDO systemctl daemon-reload
step enable $SUDO systemctl enable --quiet {name}
step restart $SUDO systemctl restart {name}
"#,
        token = quote(&token_path(id)),
        unit_path = quote(&unit_path(id)),
        unit = quote(&unit(spec)),
        name = quote(&unit_name(id)),
    )
}

/// Stops, disables and removes the service, its token and its state; every
/// step runs, each is reported.
pub fn uninstall_script(machine_id: &str) -> String {
    format!(
        r#"{PRELUDE}failed=0
if $SUDO systemctl cat {name} > /dev/null 2>&1; then
  step stop stop_unit {name} || failed=1
  step disable $SUDO systemctl disable --quiet {name} || failed=1
else
  echo "step=stop ok"; echo "step=disable ok"
fi
step remove-unit $SUDO rm -f {unit_path} || failed=1
step remove-token $SUDO rm -f {token} || failed=1
step remove-state $SUDO rm -rf {state} || failed=1
step daemon-reload $SUDO systemctl daemon-reload || failed=1
exit $failed
"#,
        name = quote(&unit_name(machine_id)),
        unit_path = quote(&unit_path(machine_id)),
        token = quote(&token_path(machine_id)),
        state = quote(&state_dir(machine_id)),
    )
}

/// Starts the installed service (`rill cluster up` after `down`).
pub fn start_script(machine_id: &str) -> String {
    format!("{PRELUDE}step start $SUDO systemctl start {}\n", quote(&unit_name(machine_id)))
}

/// Stops the service (`rill cluster down`), leaving it installed.
pub fn stop_script(machine_id: &str) -> String {
    format!("{PRELUDE}step stop stop_unit {}\n", quote(&unit_name(machine_id)))
}

/// Receives a new rill binary on stdin into a temporary file and runs its
/// `version --json` there. Prints `path=` (the service's binary, from its
/// unit; empty if not installed), `upload=TMP`, and `check=JSON` or
/// `check_failed=WHY`.
pub fn upload_script(machine_id: &str) -> String {
    format!(
        r#"set -e
path=$(sed -n 's/^ExecStart="\([^"]*\)".*/\1/p' {unit} 2>/dev/null || true)
echo "path=$path"
tmp=$(mktemp /tmp/rill-upgrade.XXXXXX)
cat > "$tmp"
chmod 755 "$tmp"
echo "upload=$tmp"
if out=$("$tmp" version --json 2>&1); then echo "check=$out"; else echo "check_failed=$(printf %s "$out" | tail -n 1)"; rm -f "$tmp"; fi
"#,
        unit = quote(&unit_path(machine_id)),
    )
}

/// Puts the uploaded binary `tmp` in place of the service's `path` (a
/// running binary cannot be overwritten: it is renamed over), keeping the
/// old one as `path.previous`, and restarts the service.
pub fn swap_script(machine_id: &str, path: &str, tmp: &str) -> String {
    format!(
        r#"{PRELUDE}step keep-previous $SUDO cp -p {path} {previous} || exit 1
step install-new sh -c '$0 cp $1 $2.new && $0 chmod 755 $2.new && $0 mv $2.new $2' "$SUDO" {tmp} {path} || exit 1
rm -f {tmp}
step restart $SUDO systemctl restart {name}
"#,
        path = quote(path),
        previous = quote(&format!("{path}.previous")),
        tmp = quote(tmp),
        name = quote(&unit_name(machine_id)),
    )
}

/// Puts `path.previous` back and restarts the service (a failed upgrade,
/// or `rill cluster upgrade --rollback`). Prints `no_previous` if there is
/// nothing to restore.
pub fn restore_script(machine_id: &str) -> String {
    format!(
        r#"{PRELUDE}path=$(sed -n 's/^ExecStart="\([^"]*\)".*/\1/p' {unit} 2>/dev/null || true)
if [ -z "$path" ] || [ ! -e "$path.previous" ]; then echo "no_previous"; exit 0; fi
step restore sh -c '$0 cp -p $1.previous $1.new && $0 mv $1.new $1' "$SUDO" "$path" || exit 1
step restart $SUDO systemctl restart {name}
"#,
        unit = quote(&unit_path(machine_id)),
        name = quote(&unit_name(machine_id)),
    )
}

/// The steps a script reported, in order: `(name, ok)`.
pub fn steps(output: &str) -> Vec<(String, bool)> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("step="))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, result)| (name.to_owned(), result == "ok"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServiceSpec<'static> {
        ServiceSpec {
            rill: "/usr/local/bin/rill",
            machine_id: "robot",
            coordinator: "10.0.0.1".parse().unwrap(),
            port: 6013,
            labels: "gpu=true,name=50% $x",
            user: "rill",
        }
    }

    #[test]
    fn the_unit_runs_the_daemon_with_its_token_outside_the_unit() {
        let unit = unit(&spec());
        for line in [
            "User=rill",
            "LoadCredential=join-token:/etc/rill/robot.token",
            "StateDirectory=rill/robot",
            "Restart=on-failure",
            "RestartSec=5",
            "RestartPreventExitStatus=2 3 4 5 6 7 8 9",
            "KillMode=mixed",
            "TimeoutStopSec=30",
            "After=network-online.target",
            "Wants=network-online.target",
            "WantedBy=multi-user.target",
        ] {
            assert!(unit.lines().any(|l| l == line), "{line}:\n{unit}");
        }
        let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
        assert!(exec.starts_with(r#"ExecStart="/usr/local/bin/rill" "daemon" "--machine-id" "robot""#), "{exec}");
        assert!(exec.contains(r#""--labels" "gpu=true,name=50%% $$x""#), "specifiers and variables literal: {exec}");
        assert!(exec.contains(r#""--cache-dir" "/var/lib/rill/robot" "--quiet""#), "{exec}");
        assert!(exec.ends_with("--join-token-file ${CREDENTIALS_DIRECTORY}/join-token"), "{exec}");
    }

    #[test]
    fn steps_are_read_in_order() {
        let out = "noise\nstep=token ok\nstep=unit ok\nstep=restart failed\n";
        assert_eq!(steps(out), [("token".into(), true), ("unit".into(), true), ("restart".into(), false)]);
    }

    /// The install script's shell, run here with `sudo` and `systemctl`
    /// replaced by stand-ins (named as such) that only record their calls:
    /// the files land where the unit says, the token 0600 from stdin.
    #[test]
    fn the_install_script_writes_the_token_from_stdin_and_the_unit() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let calls = tmp.path().join("calls");
        for tool in ["systemctl", "sudo"] {
            let path = bin.join(tool);
            let body = match tool {
                "sudo" => "#!/bin/sh\nshift\nexec \"$@\"\n".to_owned(),
                _ => format!("#!/bin/sh\necho \"$@\" >> {}\n", calls.display()),
            };
            std::fs::write(&path, body).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        // The script writes absolute paths: run it against a fake root by rewriting them.
        let root = tmp.path().join("root");
        for dir in ["etc/systemd/system", "etc/rill"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        let script = install_script(&spec()).replace("/etc/", &format!("{}/etc/", root.display()));
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"rill1.robot.secret.fp\n").unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        assert!(steps(&stdout).iter().all(|(_, ok)| *ok), "{stdout}");
        let token = root.join("etc/rill/robot.token");
        assert_eq!(std::fs::read_to_string(&token).unwrap(), "rill1.robot.secret.fp\n");
        assert_eq!(std::fs::metadata(&token).unwrap().permissions().mode() & 0o777, 0o600);
        let unit_text = std::fs::read_to_string(root.join("etc/systemd/system/rill-daemon-robot.service")).unwrap();
        assert_eq!(unit_text, unit(&spec()).replace("/etc/", &format!("{}/etc/", root.display())));
        assert!(!unit_text.contains("secret"));
        let calls = std::fs::read_to_string(&calls).unwrap();
        assert_eq!(
            calls,
            "daemon-reload\nenable --quiet rill-daemon-robot.service\nrestart rill-daemon-robot.service\n"
        );
    }
}
