//! The `rill` command: parses arguments, calls the libraries, prints.

mod output;
mod remote;
mod run;
mod updown;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
        file: PathBuf,
        /// `{"mermaid": "..."}` on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Run the coordinator (cluster state; HTTP and WebSocket on one port).
    Coordinator(remote::CoordinatorArgs),
    /// Run a daemon: registers with the coordinator and runs nodes on this machine.
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
