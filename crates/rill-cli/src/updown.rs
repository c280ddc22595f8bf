//! `rill up` / `rill destroy`: a local coordinator and daemon in the
//! background, remembered by pid in a state file.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use rill_proto::coord::{ControlRequest, ControlResponse, DEFAULT_PORT};

#[derive(clap::Args)]
pub struct UpArgs {
    /// Coordinator port.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// Coordinator store (see `rill coordinator --store`).
    #[arg(long, default_value = "redb")]
    store: String,
    /// JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct DestroyArgs {
    /// Coordinator port `rill up` used.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// JSON on stdout.
    #[arg(long)]
    json: bool,
}

use crate::dirs::state_dir;

fn pid_file(port: u16) -> PathBuf {
    state_dir().join(format!("up-{port}.pids"))
}

fn alive(pid: u32) -> bool {
    rustix::process::Pid::from_raw(pid as i32).is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

/// A local coordinator answers within this, or it is not one (a port taken by
/// something else accepts but never answers).
const LOCAL_ANSWER: Duration = Duration::from_secs(1);
/// While waiting for a starting coordinator, ask often, so that one that
/// exited is noticed at once.
const POLL_ANSWER: Duration = Duration::from_millis(200);

/// Daemons connected to the coordinator on `port`, if it answers within `limit`.
fn daemons(port: u16, limit: Duration) -> Option<usize> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    rt.block_on(async {
        let ask = async {
            let mut client = crate::access::ControlAccess::local(port).connect().await.ok()?;
            match client.request(&ControlRequest::Status).await.ok()? {
                ControlResponse::Status { daemons, .. } => Some(daemons.len()),
                _ => None,
            }
        };
        tokio::time::timeout(limit, ask).await.ok().flatten()
    })
}

pub(crate) fn spawn_background(args: &[&str], log: &Path) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("cannot find the rill executable")?;
    let out = std::fs::File::create(log).with_context(|| format!("cannot write {}", log.display()))?;
    let err = out.try_clone()?;
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group: a Ctrl-C in this terminal (sent to the
        // foreground group) does not reach it.
        .process_group(0)
        .spawn()?;
    Ok(child)
}

/// How long the coordinator and then the daemon get to come up.
const UP_LIMIT: Duration = Duration::from_secs(20);

/// Waits until `ready` or until `child` ends. `Err`: why it failed, with the
/// last lines of its log.
fn wait_ready(what: &str, child: &mut Child, log: &Path, ready: impl Fn() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + UP_LIMIT;
    loop {
        let ended = !matches!(child.try_wait(), Ok(None));
        if !ended && ready() {
            return Ok(());
        }
        if ended || Instant::now() > deadline {
            let how = if ended { "exited at once" } else { "did not answer within 20 s" };
            return Err(format!("the {what} {how}; the end of {}:\n{}", log.display(), log_tail(log)));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last lines of a log, indented.
pub(crate) fn log_tail(log: &Path) -> String {
    const LINES: usize = 5;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(LINES)..];
    if tail.is_empty() {
        return "  (empty)".to_owned();
    }
    tail.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
}

/// SIGTERM, then SIGKILL after 5 s; reaped.
pub(crate) fn stop_child(child: &mut Child) {
    if let Some(p) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Is `pid` a running process of this rill executable?
pub(crate) fn is_rill(pid: u32) -> bool {
    let (Ok(exe), Ok(ours)) = (std::fs::read_link(format!("/proc/{pid}/exe")), std::env::current_exe()) else {
        return false;
    };
    // A rebuilt binary shows as "PATH (deleted)" for processes started before.
    let exe = exe.to_string_lossy();
    alive(pid) && exe.trim_end_matches(" (deleted)") == ours.to_string_lossy()
}

/// SIGTERM, then SIGKILL after 5 s (a process `up` started earlier).
pub(crate) fn terminate(pid: u32) {
    let Some(p) = rustix::process::Pid::from_raw(pid as i32) else { return };
    let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

pub fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    if let Some(n) = daemons(args.port, LOCAL_ANSWER) {
        if args.json {
            println!("{}", serde_json::json!({"status": "already_up", "port": args.port, "daemons": n}));
        } else {
            println!(
                "a coordinator already answers on port {} ({}); `rill destroy` stops one started by `rill up`",
                args.port,
                crate::output::count(n, "daemon")
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let dir = state_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let port = args.port.to_string();
    // The coordinator first, alone: if it cannot start (port taken, store in
    // use), nothing else has been started and its own words say why.
    let coordinator_log = dir.join(format!("coordinator-{port}.log"));
    let mut coordinator =
        spawn_background(&["coordinator", "--port", &port, "--store", &args.store], &coordinator_log)?;
    if let Err(why) =
        wait_ready("coordinator", &mut coordinator, &coordinator_log, || daemons(args.port, POLL_ANSWER).is_some())
    {
        stop_child(&mut coordinator);
        anyhow::bail!("{why}");
    }
    let daemon_log = dir.join(format!("daemon-{port}.log"));
    let mut daemon = match spawn_background(&["daemon", "--coordinator-port", &port], &daemon_log) {
        Ok(child) => child,
        Err(e) => {
            stop_child(&mut coordinator);
            return Err(e);
        }
    };
    if let Err(why) = wait_ready("daemon", &mut daemon, &daemon_log, || daemons(args.port, POLL_ANSWER) == Some(1)) {
        stop_child(&mut daemon);
        stop_child(&mut coordinator);
        anyhow::bail!("{why}");
    }
    // From here they outlive this process, and `destroy` finds them by pid.
    let (coordinator, daemon) = (coordinator.id(), daemon.id());
    std::fs::write(pid_file(args.port), format!("{coordinator}\n{daemon}\n"))?;
    // Every later command finds this coordinator with no flags.
    let state = crate::dirs::coordinator_state(args.port);
    let fingerprint = rill_auth::ClusterCa::fingerprint_in(&state)?;
    let admin = rill_auth::identity::read_admin(&state.join(rill_auth::identity::ADMIN_TOKEN))?;
    let config = crate::access::remember(&format!("127.0.0.1:{}", args.port), Some(fingerprint), &admin)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"status": "up", "port": args.port, "coordinator_pid": coordinator, "daemon_pid": daemon,
                "state_dir": dir, "ca_fingerprint": fingerprint.to_string(), "config": config})
        );
    } else {
        println!(
            "coordinator (pid {coordinator}) on 127.0.0.1:{} and a daemon (pid {daemon}) are up; logs in {}",
            args.port,
            dir.display()
        );
        println!("cluster CA {fingerprint}; credentials for later commands in {}", config.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn destroy(args: DestroyArgs) -> anyhow::Result<ExitCode> {
    let file = pid_file(args.port);
    let Ok(text) = std::fs::read_to_string(&file) else {
        if args.json {
            println!("{}", serde_json::json!({"status": "nothing_to_destroy", "port": args.port}));
        } else {
            println!("nothing to destroy: no `rill up` on port {} (no {})", args.port, file.display());
        }
        return Ok(ExitCode::SUCCESS);
    };
    // The daemon first (it stops its nodes), then the coordinator. A pid
    // that is no longer this rill (it ended; the number was reused) is left
    // alone.
    let pids: Vec<u32> = text.lines().filter_map(|l| l.trim().parse().ok()).rev().collect();
    let ours: Vec<u32> = pids.iter().copied().filter(|pid| is_rill(*pid)).collect();
    for pid in &ours {
        terminate(*pid);
    }
    std::fs::remove_file(&file)?;
    crate::access::forget(&format!("127.0.0.1:{}", args.port))?;
    let status = if ours.is_empty() { "nothing_to_destroy" } else { "destroyed" };
    if args.json {
        println!("{}", serde_json::json!({"status": status, "port": args.port, "pids": ours}));
    } else if ours.is_empty() {
        println!("nothing was running for port {} any more (removed the stale {})", args.port, file.display());
    } else {
        println!("stopped the daemon and coordinator of port {}", args.port);
    }
    Ok(ExitCode::SUCCESS)
}
