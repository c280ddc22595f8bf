//! `rill up` / `rill destroy`: a local coordinator and daemon in the
//! background, remembered by pid in a state file.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
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

/// Where `up` keeps pids and logs: `$RILL_STATE_DIR`, else
/// `$XDG_STATE_HOME/rill`, else `~/.local/state/rill`.
fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RILL_STATE_DIR") {
        return dir.into();
    }
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("rill")
}

fn pid_file(port: u16) -> PathBuf {
    state_dir().join(format!("up-{port}.pids"))
}

fn alive(pid: u32) -> bool {
    rustix::process::Pid::from_raw(pid as i32).is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

/// Daemons connected to the coordinator on `port`, if it answers.
fn daemons(port: u16) -> Option<usize> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    rt.block_on(async {
        let mut client = rill_coordinator::client::ControlClient::connect(&format!("127.0.0.1:{port}")).await.ok()?;
        match client.request(&ControlRequest::Status).await.ok()? {
            ControlResponse::Status { daemons, .. } => Some(daemons.len()),
            _ => None,
        }
    })
}

fn spawn_background(args: &[&str], log: PathBuf) -> anyhow::Result<u32> {
    let exe = std::env::current_exe().context("cannot find the rill executable")?;
    let out = std::fs::File::create(&log).with_context(|| format!("cannot write {}", log.display()))?;
    let err = out.try_clone()?;
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own session: not stopped by this terminal's Ctrl-C or hangup.
        .process_group(0)
        .spawn()?;
    Ok(child.id())
}

pub fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    if let Some(n) = daemons(args.port) {
        if args.json {
            println!("{}", serde_json::json!({"status": "already_up", "port": args.port, "daemons": n}));
        } else {
            println!(
                "a coordinator already answers on port {} ({n} daemon(s)); `rill destroy` stops one started by `rill up`",
                args.port
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let dir = state_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let port = args.port.to_string();
    let coordinator = spawn_background(
        &["coordinator", "--port", &port, "--store", &args.store],
        dir.join(format!("coordinator-{port}.log")),
    )?;
    let daemon = spawn_background(&["daemon", "--coordinator-port", &port], dir.join(format!("daemon-{port}.log")))?;
    std::fs::write(pid_file(args.port), format!("{coordinator}\n{daemon}\n"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while daemons(args.port) != Some(1) {
        if Instant::now() > deadline || !alive(coordinator) || !alive(daemon) {
            anyhow::bail!(
                "the coordinator or daemon did not come up within 20 s; see the logs in {} (and `rill destroy --port {}`)",
                dir.display(),
                args.port
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({"status": "up", "port": args.port, "coordinator_pid": coordinator, "daemon_pid": daemon, "state_dir": dir})
        );
    } else {
        println!(
            "coordinator (pid {coordinator}) on 127.0.0.1:{} and a daemon (pid {daemon}) are up; logs in {}",
            args.port,
            dir.display()
        );
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
    // The daemon first (it stops its nodes), then the coordinator.
    let pids: Vec<u32> = text.lines().filter_map(|l| l.trim().parse().ok()).rev().collect();
    for pid in &pids {
        if let Some(p) = rustix::process::Pid::from_raw(*pid as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(*pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive(*pid)
            && let Some(p) = rustix::process::Pid::from_raw(*pid as i32)
        {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
    std::fs::remove_file(&file)?;
    if args.json {
        println!("{}", serde_json::json!({"status": "destroyed", "port": args.port, "pids": pids}));
    } else {
        println!("stopped the daemon and coordinator of port {}", args.port);
    }
    Ok(ExitCode::SUCCESS)
}
