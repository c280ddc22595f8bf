//! Helpers: write a dataflow into a temp dir, run `rill`, and on any failed
//! assertion print everything rill and the nodes printed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Directory of the workspace's built binaries (target/debug).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe path");
    // target/debug/deps/it-xxxx -> target/debug
    exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

/// Path of the multi-mode test node.
pub fn test_node() -> String {
    let path = bin_dir().join("rill-test-node");
    assert!(path.exists(), "{} is missing: run `cargo build --workspace` first (scripts/test.sh does)", path.display());
    path.display().to_string()
}

/// The XDG data and config homes of every `rill` a test starts: coordinator
/// state (CA, admin token) and the CLI config stay out of the user's home,
/// and a CLI finds the state of a coordinator the same test started.
pub fn xdg_home() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("it-home")
}

pub fn rill() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rill"));
    cmd.env("XDG_DATA_HOME", xdg_home().join("data"))
        .env("XDG_CONFIG_HOME", xdg_home().join("config"))
        .env("XDG_STATE_HOME", xdg_home().join("state"))
        .env("XDG_CACHE_HOME", xdg_home().join("cache"));
    cmd
}

/// Mints join token `name` on the coordinator on `port` (with `extra`
/// arguments such as `--ttl`) and writes it into a 0600 file in `dir`.
pub fn join_token(procs: &Processes, port: u16, name: &str, extra: &[&str]) -> PathBuf {
    let port_text = port.to_string();
    let mut args = vec!["token", "create", name, "--json", "--coordinator-port", &port_text];
    args.extend(extra);
    let (code, created, stderr) = rill_json(&args);
    assert_eq!(code, Some(0), "token create: {stderr}\n{}", procs.logs());
    let token = created["token"].as_str().expect("the token").to_owned();
    let path = procs.dir.path().join(format!("{name}.token"));
    use std::os::unix::fs::OpenOptionsExt;
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).expect("token file");
    std::io::Write::write_all(&mut file, token.as_bytes()).expect("write the token");
    path
}

/// How a test reaches the coordinator on `port` as its admin would: TLS
/// pinned on the CA in the coordinator's state, the admin token.
pub fn admin_dial(port: u16) -> rill_auth::dial::Dial {
    let state = xdg_home().join(format!("data/rill/coordinator-{port}"));
    let pin = rill_auth::ClusterCa::fingerprint_in(&state).expect("the coordinator's CA");
    let admin = rill_auth::identity::read_admin(&state.join("admin.token")).expect("the admin token");
    rill_auth::dial::Dial {
        addr: format!("127.0.0.1:{port}"),
        tls: Some(rill_auth::tls::client_config(pin, None).expect("TLS")),
        bearer: Some(admin.expose()),
    }
}

/// A dataflow file in its own temp dir.
pub struct Flow {
    pub dir: tempfile::TempDir,
    pub file: PathBuf,
}

impl Flow {
    /// `{node}` in `yaml` becomes the test node's path.
    pub fn new(yaml: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("dataflow.yml");
        std::fs::write(&file, yaml.replace("{node}", &test_node())).expect("write dataflow");
        Self { dir, file }
    }

    /// Runs `rill run` to completion (bounded by `limit`).
    pub fn run(&self, extra: &[&str], limit: Duration) -> Finished {
        let mut running = self.spawn(extra);
        running.wait(limit)
    }

    pub fn spawn(&self, extra: &[&str]) -> Running {
        let mut cmd = rill();
        cmd.arg("run").arg(&self.file).args(extra);
        Running::start(cmd)
    }
}

/// A `rill` process whose output is collected as it comes.
pub struct Running {
    pub child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    started: Instant,
}

fn collect(pipe: impl std::io::Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut text = into.lock().unwrap_or_else(|e| e.into_inner());
            text.push_str(&line);
            text.push('\n');
        }
    });
}

impl Running {
    pub fn start(mut cmd: Command) -> Self {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn rill");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        collect(child.stdout.take().expect("stdout"), stdout.clone());
        collect(child.stderr.take().expect("stderr"), stderr.clone());
        Self { child, stdout, stderr, started: Instant::now() }
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until `pred(stdout)` holds, at most `limit`; panics with the logs otherwise.
    pub fn wait_for(&self, what: &str, limit: Duration, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if pred(&self.stdout()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{what} did not happen within {limit:?}\n{}", self.logs());
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    pub fn logs(&self) -> String {
        format!("--- rill stdout ---\n{}--- rill stderr ---\n{}", self.stdout(), self.stderr())
    }

    /// Waits for exit (killing it after `limit`, which fails the test).
    pub fn wait(&mut self, limit: Duration) -> Finished {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader threads catch the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return Finished {
                    code: status.code(),
                    stdout: self.stdout(),
                    stderr: self.stderr(),
                    elapsed: self.started.elapsed(),
                };
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("rill did not exit within {limit:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A finished `rill` run.
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    pub fn logs(&self) -> String {
        format!(
            "exit code {:?} after {:?}\n--- rill stdout ---\n{}--- rill stderr ---\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }

    /// Lines a node printed to stdout, without the `[node] ` prefix.
    pub fn node_lines(&self, node: &str) -> Vec<String> {
        let prefix = format!("[{node}] ");
        self.stdout.lines().filter_map(|l| l.strip_prefix(&prefix)).map(str::to_owned).collect()
    }
}

/// Asserts with the full logs in the failure message.
#[macro_export]
macro_rules! check {
    ($run:expr, $cond:expr, $($msg:tt)+) => {
        assert!($cond, "{}\n{}", format!($($msg)+), $run.logs());
    };
}

/// True while a process with this pid exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// `rill-shm` mappings of a process.
pub fn shm_maps(pid: u32) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines().filter(|l| l.contains("rill-shm")).count()
}

/// Pids of the nodes from `rill run --json` output.
pub fn spawned_pids(json_stdout: &str) -> Vec<(String, u32)> {
    json_stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "spawned")
        .filter_map(|v| Some((v["node"].as_str()?.to_owned(), v["pid"].as_u64()? as u32)))
        .collect()
}

/// Processes started by a test, killed (by pid) on drop; their logs go to
/// files that are printed when an assertion fails.
pub struct Processes {
    pub dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
}

impl Processes {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("tempdir"), children: Vec::new() }
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Starts `cmd` as process `name`, its output into its log.
    pub fn start_command(&mut self, name: &str, mut cmd: Command) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(name)).expect("log file");
        let err = log.try_clone().expect("log file");
        let child = cmd.stdin(Stdio::null()).stdout(log).stderr(err).spawn().expect("spawn");
        self.children.push((name.to_owned(), child));
    }

    pub fn start(&mut self, name: &str, args: &[&str]) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(name)).expect("log file");
        let err = log.try_clone().expect("log file");
        let child = rill().args(args).stdin(Stdio::null()).stdout(log).stderr(err).spawn().expect("spawn rill");
        self.children.push((name.to_owned(), child));
    }

    /// The pid of process `name`.
    pub fn pid(&self, name: &str) -> u32 {
        self.children.iter().find(|(n, _)| n == name).map(|(_, c)| c.id()).expect("no such process")
    }

    /// Sends `signal` to process `name`.
    pub fn signal(&self, name: &str, signal: i32) {
        // SAFETY: kill(2) on a child this test started.
        unsafe { libc::kill(self.pid(name) as i32, signal) };
    }

    /// Waits (at most `limit`) for process `name` to exit; its exit code.
    pub fn wait_exit(&mut self, name: &str, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            let child = &mut self.children.iter_mut().find(|(n, _)| n == name).expect("no such process").1;
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                panic!("{name} did not exit within {limit:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The text of process `name`'s log so far.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// Waits until process `name`'s log satisfies `pred`, at most `limit`.
    pub fn wait_log(&self, name: &str, what: &str, limit: Duration, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + limit;
        while !pred(&self.log(name)) {
            assert!(Instant::now() < deadline, "{what} did not happen within {limit:?}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self, name: &str) {
        if let Some((_, child)) = self.children.iter_mut().find(|(n, _)| n == name) {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.retain(|(n, _)| n != name);
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            out.push_str(&format!("--- {} ---\n{text}", entry.file_name().to_string_lossy()));
        }
        out
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

pub fn status(port: u16) -> Option<serde_json::Value> {
    let out = rill().args(["status", "--json", "--coordinator-port", &port.to_string()]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Waits until `rill status --json` satisfies `pred`, at most `limit`.
pub fn wait_status(
    procs: &Processes,
    port: u16,
    what: &str,
    limit: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(value) = status(port).filter(|v| pred(v)) {
            return value;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not happen within {limit:?}; last status {:?}\n{}", status(port), procs.logs());
}

pub fn machines(status: &serde_json::Value) -> Vec<String> {
    status["daemons"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["machine_id"].as_str().map(str::to_owned))
        .collect()
}

pub fn rill_json(args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let out = rill().args(args).output().expect("run rill");
    let value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    (out.status.code(), value, String::from_utf8_lossy(&out.stderr).into_owned())
}
