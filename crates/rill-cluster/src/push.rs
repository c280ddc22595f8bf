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

/// Receives a binary on stdin into `dir/SHA256` unless a file with that
/// hash is there already (then prints `cached`): written to a temporary
/// file, its hash checked, made executable, renamed into place (`pushed`).
/// Uses `sudo -n` when the directory is not writable by the SSH user (a
/// service that runs as another user). Prints `error=WHY` on failure.
pub fn push_script(dir: &str, sha256: &str) -> Result<String, String> {
    if !is_sha256_hex(sha256) {
        return Err(format!("{sha256:?} is not a sha256"));
    }
    if !dir.starts_with('/') || dir.chars().any(char::is_control) {
        return Err(format!("the daemon's artifact directory {dir:?} is not an absolute path"));
    }
    Ok(format!(
        r#"d={dir}; sha={sha256}; f="$d/$sha"
hash_of() {{ $S sha256sum "$1" 2>/dev/null | cut -d' ' -f1; }}
S=
if [ -f "$f" ] && [ "$(hash_of "$f")" = "$sha" ]; then cat > /dev/null; echo cached; exit 0; fi
if mkdir -p "$d" 2>/dev/null && [ -w "$d" ]; then S=
elif command -v sudo > /dev/null 2>&1 && sudo -n true 2>/dev/null; then S="sudo -n"
else cat > /dev/null; echo "error=cannot write $d as $(id -un), and sudo -n is refused"; exit 1
fi
if [ -n "$S" ] && [ -f "$f" ] && [ "$(hash_of "$f")" = "$sha" ]; then cat > /dev/null; echo cached; exit 0; fi
tmp="$d/.$sha.push-$$"
if ! $S sh -c 'mkdir -p "$1" && cat > "$2"' sh "$d" "$tmp"; then $S rm -f "$tmp"; echo "error=cannot write $tmp"; exit 1; fi
got=$(hash_of "$tmp")
if [ "$got" != "$sha" ]; then $S rm -f "$tmp"; echo "error=the copy arrived with sha256 ${{got:-unknown}}"; exit 1; fi
$S chmod 755 "$tmp" && $S mv "$tmp" "$f" && echo pushed
"#,
        dir = quote(dir),
    ))
}

/// What [`push_script`] reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// Sent and in place.
    Pushed,
    /// A file with that hash was there already; nothing was written.
    Cached,
}

/// Reads what [`push_script`] printed.
pub fn push_result(stdout: &str, stderr: &str) -> Result<Pushed, String> {
    for line in stdout.lines() {
        match line.trim() {
            "pushed" => return Ok(Pushed::Pushed),
            "cached" => return Ok(Pushed::Cached),
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
        let script = push_script(target.to_str().unwrap(), sha).unwrap();
        let (out, err) = run(&script, b"hello world");
        assert_eq!(push_result(&out, &err), Ok(Pushed::Pushed), "{out}{err}");
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(target.join(sha)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        let (out, err) = run(&script, b"hello world");
        assert_eq!(push_result(&out, &err), Ok(Pushed::Cached));
        // Damaged in transit (or a wrong hash): refused, nothing left behind.
        let other = "0".repeat(64);
        let (out, err) = run(&push_script(target.to_str().unwrap(), &other).unwrap(), b"hello world");
        let refused = push_result(&out, &err).unwrap_err();
        assert!(refused.contains("arrived with sha256 b94d27"), "{refused}");
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 1, "only the good one");
        assert!(push_script("relative/dir", sha).is_err() && push_script("/d", "abc").is_err());
    }
}
