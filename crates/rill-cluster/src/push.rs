//! `distribute: scp`: node binaries pushed over SSH into a daemon's
//! artifact directory (`<cache>/artifacts/<sha256>`), where the daemon
//! verifies them before running them.

use std::collections::BTreeMap;

use rill_core::{Deploy, Machine, is_sha256_hex};

use crate::ssh::quote;

/// The machines of the cluster file a node may be placed on: its
/// `deploy.machine`, else those with all of its `deploy.labels` (all of
/// them when it names neither). A node is pushed to each, so that it can
/// also run there after a recovery.
pub fn candidates<'a>(machines: &'a [Machine], deploy: &Deploy) -> Vec<&'a Machine> {
    match &deploy.machine {
        Some(id) => machines.iter().filter(|m| &m.id == id).collect(),
        None => machines.iter().filter(|m| labels_match(&m.labels, &deploy.labels)).collect(),
    }
}

fn labels_match(have: &BTreeMap<String, String>, want: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

/// Checks the directory and paths a push would use.
fn checked(dir: &str, sha256: &str) -> Result<(), String> {
    if !is_sha256_hex(sha256) {
        return Err(format!("{sha256:?} is not a sha256"));
    }
    if !dir.starts_with('/') || dir.chars().any(char::is_control) {
        return Err(format!("the daemon's artifact directory {dir:?} is not an absolute path"));
    }
    Ok(())
}

/// Prints `cached` if `dir/SHA256` is there with that hash (nothing need be
/// sent), else `missing`. Cheap: run before [`push_script`].
pub fn check_script(dir: &str, sha256: &str) -> Result<String, String> {
    checked(dir, sha256)?;
    Ok(format!(
        r#"f={dir}/{sha256}
if [ -f "$f" ] && [ "$(sha256sum < "$f" 2>/dev/null | cut -d' ' -f1)" = {sha256} ]; then echo cached; else echo missing; fi
"#,
        dir = quote(dir),
    ))
}

/// Receives a binary on stdin into `dir/SHA256`: written to a temporary
/// file, its hash checked, made executable, renamed into place (prints
/// `pushed`). Written as the SSH user, never with sudo: the directory is
/// one a daemon reported, and the daemon (a service runs as its
/// `service_user`) must own what is in it. Prints `error=WHY` on failure,
/// leaving nothing behind.
pub fn push_script(dir: &str, sha256: &str) -> Result<String, String> {
    checked(dir, sha256)?;
    Ok(format!(
        r#"d={dir}; sha={sha256}; tmp="$d/.$sha.push-$$"
fail() {{ rm -f "$tmp"; cat > /dev/null; echo "error=$1"; exit 1; }}
mkdir -p "$d" 2>/dev/null; [ -w "$d" ] || fail "cannot write $d as $(id -un): run the daemon's service as the SSH user (service_user), or use distribute: http"
cat > "$tmp" || fail "cannot write $tmp"
got=$(sha256sum < "$tmp" | cut -d' ' -f1)
[ "$got" = "$sha" ] || fail "the copy arrived with sha256 ${{got:-unknown}}"
chmod 755 "$tmp" && mv -f "$tmp" "$d/$sha" || fail "cannot put it in place as $d/$sha"
echo pushed
"#,
        dir = quote(dir),
    ))
}

/// What [`check_script`] or [`push_script`] reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// Sent and in place.
    Pushed,
    /// A file with that hash was there already; nothing was sent.
    Cached,
    /// ([`check_script`]) Not there yet: push it.
    Missing,
}

/// Reads what [`check_script`] or [`push_script`] printed.
pub fn push_result(stdout: &str, stderr: &str) -> Result<Pushed, String> {
    for line in stdout.lines() {
        match line.trim() {
            "pushed" => return Ok(Pushed::Pushed),
            "cached" => return Ok(Pushed::Cached),
            "missing" => return Ok(Pushed::Missing),
            other => {
                if let Some(why) = other.strip_prefix("error=") {
                    return Err(why.to_owned());
                }
            }
        }
    }
    let last = stderr.trim().lines().last().unwrap_or("no output");
    Err(format!("the push did not finish: {last}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(id: &str, labels: &[(&str, &str)]) -> Machine {
        Machine {
            id: id.into(),
            host: "h".into(),
            user: None,
            ssh_port: None,
            identity_file: None,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            service_user: None,
        }
    }

    #[test]
    fn a_node_is_pushed_to_every_machine_it_may_run_on() {
        let machines = [machine("a", &[("gpu", "true")]), machine("b", &[]), machine("c", &[("gpu", "true")])];
        let ids = |deploy: &Deploy| candidates(&machines, deploy).iter().map(|m| m.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&Deploy { machine: Some("b".into()), ..Deploy::default() }), ["b"]);
        let gpu = Deploy { labels: [("gpu".to_owned(), "true".to_owned())].into(), ..Deploy::default() };
        assert_eq!(ids(&gpu), ["a", "c"]);
        assert_eq!(ids(&Deploy::default()), ["a", "b", "c"]);
        assert!(ids(&Deploy { machine: Some("z".into()), ..Deploy::default() }).is_empty());
    }

    /// The script run locally with `sh`, as ssh would run it remotely.
    fn run(script: &str, stdin: &[u8]) -> (String, String) {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    #[test]
    fn a_push_lands_verified_and_executable_and_is_not_sent_twice() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("cache dir/artifacts");
        let sha = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";
        let check = check_script(target.to_str().unwrap(), sha).unwrap();
        let (out, err) = run(&check, b"");
        assert_eq!(push_result(&out, &err), Ok(Pushed::Missing), "{out}{err}");
        let script = push_script(target.to_str().unwrap(), sha).unwrap();
        let (out, err) = run(&script, b"hello world");
        assert_eq!(push_result(&out, &err), Ok(Pushed::Pushed), "{out}{err}");
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(target.join(sha)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        let (out, err) = run(&check, b"");
        assert_eq!(push_result(&out, &err), Ok(Pushed::Cached), "not sent twice");
        // Damaged in transit (or a wrong hash): refused, nothing left behind.
        let other = "0".repeat(64);
        let (out, err) = run(&push_script(target.to_str().unwrap(), &other).unwrap(), b"hello world");
        let refused = push_result(&out, &err).unwrap_err();
        assert!(refused.contains("arrived with sha256 b94d27"), "{refused}");
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 1, "only the good one");
        assert!(push_script("relative/dir", sha).is_err() && push_script("/d", "abc").is_err());
    }
}
