//! The `rill` command: parses arguments, calls the libraries, prints.

/// `eprintln!` that never panics: when stderr is gone there is nobody to tell.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod access;
mod cluster;
mod dirs;
mod doctor;
mod new;
mod output;
mod record;
mod remote;
mod run;
mod services;
mod ship;
mod tap;
mod tokens;
mod top;
mod topic;
mod updown;
mod version;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// rill: dataflows of node processes, on one machine or a fleet.
#[derive(Parser)]
#[command(name = "rill", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Build and run a dataflow on this machine until every node ends (Ctrl-C stops it).
    Run(run::RunArgs),
    /// Validate dataflow files; prints every problem with file:line:column.
    Check {
        /// Dataflow files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// One JSON object per file on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print a dataflow as a Mermaid flowchart.
    Graph {
        /// The dataflow file.
        file: PathBuf,
        /// `{"file": "...", "mermaid": "..."}` on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Run the coordinator (cluster state; HTTP and WebSocket on one port).
    Coordinator(remote::CoordinatorArgs),
    /// Run a daemon: registers with the coordinator and runs nodes on this machine.
    ///
    /// Exit codes when the coordinator refuses it for good: 2 already_connected,
    /// 3 protocol_mismatch, 4 unauthorized, 5 untrusted coordinator, 6 revoked,
    /// 7 expired, 8 already bound to another machine, 9 other.
    Daemon(remote::DaemonArgs),
    /// Show the coordinator and its connected daemons.
    Status(remote::StatusArgs),
    /// Place a dataflow on the connected daemons and start it.
    Start(remote::StartArgs),
    /// List the dataflows the coordinator knows.
    List(remote::ListArgs),
    /// Stop a dataflow by name or uuid.
    Stop(remote::StopArgs),
    /// Stop a dataflow and start it again from the stored descriptor (no YAML needed).
    Restart(remote::StopArgs),
    /// Print a dataflow's node output (kept lines, then new ones with --follow).
    Logs(remote::LogsArgs),
    /// Start a local coordinator and daemon in the background.
    Up(updown::UpArgs),
    /// Stop what `rill up` started.
    Destroy(updown::DestroyArgs),
    /// A cluster from a cluster.yml: check, up, status, down, restart.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// This binary's version (with its build stamp) and protocol.
    Version {
        /// `{"version", "protocol"}` on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Join tokens for daemons: create, list, revoke.
    Token {
        #[command(subcommand)]
        command: tokens::TokenCommand,
    },
    /// The outputs of a running dataflow: list, info.
    Topic {
        #[command(subcommand)]
        command: topic::TopicCommand,
    },
    /// Every node's machine, pid, CPU, memory, restarts, message rates and drops, refreshed each second.
    Top(top::TopArgs),
    /// Record what a running dataflow's outputs send into an MCAP file (Foxglove, ROS 2 tooling).
    Record(record::RecordArgs),
    /// Run a dataflow with recorded outputs in place of their producers, at the recorded pace.
    Replay(record::ReplayArgs),
    /// The node `rill replay` runs in place of a recorded producer.
    #[command(hide = true)]
    ReplayNode(record::ReplayNodeArgs),
    /// Create a dataflow that runs at once with `rill run`: a talker and a listener, in Rust or Python.
    New(new::NewArgs),
    /// Check that this machine can run rill (kernel features, limits, Python,
    /// ssh, the coordinator), and say what to fix.
    Doctor(doctor::DoctorArgs),
    /// Print a shell completion script: `source <(rill completion bash)`.
    ///
    /// To install: bash, `rill completion bash > ~/.local/share/bash-completion/completions/rill`;
    /// zsh, `rill completion zsh > "${fpath[1]}/_rill"`; fish,
    /// `rill completion fish > ~/.config/fish/completions/rill.fish`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    // The version with its build stamp, if any (`rill --version`).
    let version: &'static str = Box::leak(crate::version::full().into_boxed_str());
    let matches = Cli::command().version(version).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Rust ignores SIGPIPE, so printing to a reader that went away
    // (`rill logs app | head -1`) would panic. Commands that only print die
    // quietly of SIGPIPE instead, as other CLI tools do (exit status 141 in
    // a shell). `run`, `daemon` and `coordinator` keep ignoring it: they
    // have nodes or daemons to stop in order, and handle write errors.
    if !matches!(cli.command, Commands::Run(_) | Commands::Replay(_) | Commands::Daemon(_) | Commands::Coordinator(_)) {
        // SAFETY: restoring the default disposition of a signal, before any
        // other thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        Commands::Run(args) => run::run(args),
        Commands::Check { files, json } => Ok(output::check(&files, json)),
        Commands::Graph { file, json } => output::graph(&file, json),
        Commands::Coordinator(args) => remote::coordinator(args),
        Commands::Daemon(args) => remote::daemon(args),
        Commands::Status(args) => remote::status(args),
        Commands::Start(args) => remote::start(args),
        Commands::List(args) => remote::list(args),
        Commands::Stop(args) => remote::stop(args),
        Commands::Restart(args) => remote::restart(args),
        Commands::Logs(args) => remote::logs(args),
        Commands::Up(args) => updown::up(args),
        Commands::Destroy(args) => updown::destroy(args),
        Commands::Token { command } => tokens::run(command),
        Commands::Version { json } => {
            let (version, protocol) = (crate::version::full(), rill_proto::coord::COORD_PROTOCOL_VERSION);
            match json {
                true => println!("{}", serde_json::json!({"version": version, "protocol": protocol})),
                false => println!("rill {version} (protocol {protocol})"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Commands::Cluster { command } => cluster::run(command),
        Commands::Doctor(args) => doctor::doctor(args),
        Commands::New(args) => new::new(args),
        Commands::Top(args) => top::top(args),
        Commands::Record(args) => record::record(args),
        Commands::Replay(args) => record::replay(args),
        Commands::ReplayNode(args) => record::replay_node(args),
        Commands::Topic { command } => topic::run(command),
        Commands::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "rill", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            note!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    /// Every `rill ...` line of the user docs' shell blocks, as written.
    fn documented_commands() -> Vec<(String, String)> {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let mut commands = Vec::new();
        for doc in ["README.md", "docs/dataflow.md", "docs/distributed.md", "docs/security.md", "docs/cluster.md"] {
            let text = std::fs::read_to_string(format!("{root}/{doc}")).expect("docs are readable");
            let mut in_shell = false;
            for line in text.lines() {
                if line.starts_with("```") {
                    in_shell = line == "```sh";
                    continue;
                }
                let command = line.split(" #").next().unwrap_or("").trim();
                if in_shell && command.starts_with("rill ") {
                    commands.push((doc.to_owned(), command.to_owned()));
                }
            }
        }
        commands
    }

    #[test]
    fn every_documented_command_line_is_accepted() {
        let commands = documented_commands();
        assert!(commands.len() > 20, "the docs' commands were found: {commands:?}");
        for (doc, command) in commands {
            let words = command.split_whitespace();
            if let Err(e) = Cli::try_parse_from(words) {
                panic!("{doc}: `{command}` is not accepted by the CLI:\n{e}");
            }
        }
    }
}
