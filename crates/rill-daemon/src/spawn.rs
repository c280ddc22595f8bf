//! Starting one node process: its program, arguments, environment, working
//! directory, its end of the daemon socket as fd 3, its own process group
//! (so a terminal's Ctrl-C reaches only `rill`, which then stops nodes in
//! order) and death with its parent.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use rill_core::NodeSpec;
use rill_proto::{env, transport};

/// The fd number a node finds its daemon socket at.
const NODE_FD: i32 = 3;

/// A started node process and the daemon's end of its socket.
pub struct SpawnedNode {
    pub child: Child,
    pub socket: OwnedFd,
    /// For the node's log: why it runs unpinned despite its `cpu_affinity`.
    pub warning: Option<String>,
}

/// The CPU set to pin `node` to (`None`: no `cpu_affinity`), or why it
/// runs unpinned: a core this machine (this daemon's allowed set) lacks.
pub fn affinity(node: &NodeSpec) -> Result<Option<libc::cpu_set_t>, String> {
    if node.cpu_affinity.is_empty() {
        return Ok(None);
    }
    // SAFETY: a zeroed cpu_set_t is an empty set; sched_getaffinity fills it.
    let allowed = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(format!(
                "rill: cannot read this machine's cores ({}); the node runs unpinned",
                std::io::Error::last_os_error()
            ));
        }
        set
    };
    let max = libc::CPU_SETSIZE as usize;
    // SAFETY: CPU_ISSET reads a set we own, for cores below CPU_SETSIZE.
    let has = |core: usize| core < max && unsafe { libc::CPU_ISSET(core, &allowed) };
    let missing: Vec<String> = node.cpu_affinity.iter().filter(|c| !has(**c as usize)).map(|c| c.to_string()).collect();
    if !missing.is_empty() {
        let cores: Vec<usize> = (0..max).filter(|c| has(*c)).collect();
        return Err(format!(
            "rill: cpu_affinity names core {} which this machine does not have (its cores: {}); the node runs unpinned",
            missing.join(", "),
            ranges(&cores)
        ));
    }
    // SAFETY: as above; every core is below CPU_SETSIZE (checked).
    let pinned = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        node.cpu_affinity.iter().for_each(|c| libc::CPU_SET(*c as usize, &mut set));
        set
    };
    Ok(Some(pinned))
}

/// `0-3,6` for cores 0, 1, 2, 3, 6.
fn ranges(cores: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cores.len() {
        let start = cores[i];
        while i + 1 < cores.len() && cores[i + 1] == cores[i] + 1 {
            i += 1;
        }
        parts.push(if cores[i] == start { start.to_string() } else { format!("{start}-{}", cores[i]) });
        i += 1;
    }
    parts.join(",")
}

/// The environment variable naming the interpreter of `.py` nodes (in the
/// node's `env`, else the daemon's environment); default `python3`.
pub const PYTHON_ENV: &str = "RILL_PYTHON";

/// True for a node whose `path` is a Python script, run by an interpreter.
pub fn is_python(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "py")
}

/// The interpreter that runs `node` when its path is a Python script:
/// [`PYTHON_ENV`] from the node's `env` (a relative path is taken from the
/// dataflow's directory `base_dir`), else from this process's environment
/// (relative to its current directory), else `python3` from `PATH`.
pub fn python_for(node: &NodeSpec, base_dir: &Path) -> OsString {
    let from_node = node.env.get(PYTHON_ENV).filter(|p| !p.is_empty()).map(|p| (OsString::from(p), base_dir));
    let here = std::env::current_dir().unwrap_or_default();
    let from_env = || std::env::var_os(PYTHON_ENV).filter(|p| !p.is_empty()).map(|p| (p, here.as_path()));
    match from_node.or_else(from_env) {
        // A bare name is a command on PATH; a relative path would otherwise
        // be looked up from the node's working directory.
        Some((python, dir)) if Path::new(&python).is_relative() && python.as_encoded_bytes().contains(&b'/') => {
            dir.join(python).into_os_string()
        }
        Some((python, _)) => python,
        None => "python3".into(),
    }
}

/// Finds the executable for `path`: relative paths are taken from the
/// dataflow's directory, bare names from `PATH`. A `.py` script need not be
/// executable: it runs with Python (see [`python_for`]).
pub fn resolve_program(path: &str, base_dir: &Path) -> Result<PathBuf, String> {
    if is_python(Path::new(path)) {
        let script = base_dir.join(path);
        return match script.is_file() {
            true => Ok(script),
            false => Err(format!("Python script {} does not exist (is `path` right?)", script.display())),
        };
    }
    if !path.contains('/') {
        let search = std::env::var_os("PATH").unwrap_or_default();
        return std::env::split_paths(&search)
            .map(|dir| dir.join(path))
            .find(|candidate| is_executable(candidate))
            .ok_or_else(|| format!("`{path}` is not a command on PATH"));
    }
    let program = base_dir.join(path);
    if !program.exists() {
        return Err(format!(
            "executable {} does not exist (is `path` right, did the `build` step make it?)",
            program.display()
        ));
    }
    if !is_executable(&program) {
        return Err(format!("{} is not an executable file", program.display()));
    }
    Ok(program)
}

/// Where `node` runs: its `deploy.working_dir` (relative to the dataflow's
/// directory), else the dataflow's directory when this machine has it,
/// else the daemon's home directory (a dataflow started from another
/// machine, whose directory exists only there).
pub fn working_dir(node: &NodeSpec, base_dir: &Path) -> Result<PathBuf, String> {
    if let Some(dir) = &node.deploy.working_dir {
        let dir = base_dir.join(dir);
        return match dir.is_dir() {
            true => Ok(dir),
            false => Err(format!("working_dir {} does not exist on this machine", dir.display())),
        };
    }
    if base_dir.is_dir() {
        return Ok(base_dir.to_owned());
    }
    Ok(std::env::var_os("HOME").map(PathBuf::from).filter(|h| h.is_dir()).unwrap_or_else(|| PathBuf::from("/")))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Credentials in the daemon's environment that its nodes and builds must
/// not inherit.
pub const SECRET_ENV: [&str; 2] = ["RILL_JOIN_TOKEN", "RILL_TOKEN"];

/// Starts `node` from `program` in `working_dir`; with an `interpreter`
/// (a `.py` node: see [`python_for`]), `program` is the script it runs.
pub fn spawn_node(
    node: &NodeSpec,
    program: &Path,
    interpreter: Option<&OsStr>,
    working_dir: &Path,
) -> std::io::Result<SpawnedNode> {
    let (daemon_end, node_end) = transport::socket_pair()?;
    let inputs: Vec<String> = node.inputs.iter().map(|(id, input)| format!("{id}:{}", input.queue_size)).collect();
    let mut command = match interpreter {
        Some(python) => {
            let mut command = Command::new(python);
            // Unbuffered, so what the node prints reaches `rill logs` as it
            // happens, not when a buffer fills or the node exits.
            command.arg("-u").arg(program).env("PYTHONUNBUFFERED", "1");
            command
        }
        None => Command::new(program),
    };
    SECRET_ENV.iter().for_each(|var| {
        command.env_remove(var);
    });
    command
        .args(&node.args)
        .current_dir(working_dir)
        .envs(&node.env)
        .env(env::FD, NODE_FD.to_string())
        .env(env::NODE_ID, &node.id)
        .env(env::INPUTS, inputs.join(","))
        .env(env::OUTPUTS, node.outputs.join(","))
        .env(env::PROTOCOL, rill_proto::LOCAL_PROTOCOL_VERSION.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let raw = node_end.as_raw_fd();
    let (pin, warning) = match affinity(node) {
        Ok(pin) => (pin, None),
        Err(warning) => (None, Some(warning)),
    };
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if raw == NODE_FD {
                // dup2 onto itself keeps close-on-exec: clear it instead.
                if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, NODE_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // A node must not outlive the daemon that routes its data.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Pinned before it runs a single instruction of its own.
            if let Some(set) = &pin
                && libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    drop(node_end);
    Ok(SpawnedNode { child, socket: daemon_end, warning })
}

#[cfg(test)]
mod working_dir_tests {
    use super::*;

    #[test]
    fn a_python_node_runs_with_its_env_interpreter_relative_to_the_dataflow_else_the_daemons_else_python3() {
        let parse = |env: &str| {
            let yaml = format!("nodes:\n  - id: n\n    path: n.py\n    env: {{ {env} }}\n");
            rill_core::Dataflow::parse(&yaml, Path::new("d.yml")).unwrap().nodes.remove(0)
        };
        let base = Path::new("/flows/demo");
        assert!(is_python(Path::new("n.py")) && !is_python(Path::new("n.pyc")) && !is_python(Path::new("py")));
        assert_eq!(python_for(&parse("RILL_PYTHON: /opt/venv/bin/python"), base), "/opt/venv/bin/python");
        assert_eq!(python_for(&parse("RILL_PYTHON: venv/bin/python"), base), "/flows/demo/venv/bin/python");
        assert_eq!(python_for(&parse("RILL_PYTHON: python3.11"), base), "python3.11", "a command on PATH");
        // Empty or unset in the node: the daemon's own setting, else python3.
        let daemons = match std::env::var_os(PYTHON_ENV).filter(|p| !p.is_empty()) {
            Some(p) if Path::new(&p).is_relative() && p.as_encoded_bytes().contains(&b'/') => {
                std::env::current_dir().unwrap().join(p).into_os_string()
            }
            Some(p) => p,
            None => "python3".into(),
        };
        assert_eq!(python_for(&parse("RILL_PYTHON: ''"), base), daemons);
        assert_eq!(python_for(&parse("OTHER: x"), base), daemons);
        let script = tempfile::tempdir().unwrap();
        std::fs::write(script.path().join("n.py"), "print('hi')\n").unwrap();
        assert_eq!(resolve_program("n.py", script.path()).unwrap(), script.path().join("n.py"), "no exec bit needed");
        let missing = resolve_program("gone.py", script.path()).unwrap_err();
        assert!(missing.contains("Python script") && missing.contains("gone.py does not exist"), "{missing}");
    }

    #[test]
    fn a_node_runs_in_its_working_dir_else_the_dataflow_dir_else_home() {
        let tmp = tempfile::tempdir().unwrap();
        let mut node =
            rill_core::Dataflow::parse("nodes:\n  - id: n\n    path: x\n", Path::new("d.yml")).unwrap().nodes.remove(0);
        assert_eq!(working_dir(&node, tmp.path()).unwrap(), tmp.path());
        let elsewhere = Path::new("/nonexistent/dataflow/dir");
        let home = std::env::var_os("HOME").map(PathBuf::from).filter(|h| h.is_dir()).unwrap_or_else(|| "/".into());
        assert_eq!(
            working_dir(&node, elsewhere).unwrap(),
            home,
            "a dataflow from another machine runs in the home dir"
        );
        node.deploy.working_dir = Some("sub".into());
        let err = working_dir(&node, tmp.path()).unwrap_err();
        assert!(err.contains("sub does not exist on this machine"), "{err}");
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        assert_eq!(working_dir(&node, tmp.path()).unwrap(), tmp.path().join("sub"));
    }
}
