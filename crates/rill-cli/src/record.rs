//! `rill record` (a running dataflow's outputs into an MCAP file, through a
//! tap), `rill replay` (a dataflow run with recorded outputs in place of
//! their producers) and `rill replay-node` (the node that plays them).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use rill_record::{Messages, Recorder};

use crate::access::ControlAccess;

#[derive(clap::Args)]
pub struct RecordArgs {
    /// The running dataflow's name or uuid.
    dataflow: String,
    /// The file to write (default: NAME-UNIXTIME.mcap here); never written over.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Only these outputs, as NODE/OUTPUT (comma-separated; default: every output).
    #[arg(long, value_delimiter = ',')]
    outputs: Vec<String>,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// `{"file","messages","bytes","dropped","cut","topics"}` on stdout at the end.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    coordinator: ControlAccess,
}

/// Records until Ctrl-C (or SIGTERM), `--count`, `--duration` or the
/// dataflow's end, then finishes the file so that readers see all of it.
pub fn record(args: RecordArgs) -> anyhow::Result<ExitCode> {
    let limit = match args.duration {
        Some(secs) => {
            Some(Duration::try_from_secs_f64(secs).context("--duration must be a non-negative number of seconds")?)
        }
        None => None,
    };
    crate::remote::runtime()?.block_on(async move {
        let mut tap = crate::tap::Tap::open(
            &args.coordinator,
            &args.dataflow,
            args.outputs,
            (rill_proto::tap::MAX_TAP_PREVIEW, 0),
        )
        .await?;
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let path = args.output.unwrap_or_else(|| PathBuf::from(format!("{}-{unix}.mcap", tap.name)));
        let about = BTreeMap::from([
            ("dataflow".to_owned(), tap.name.clone()),
            ("uuid".to_owned(), tap.uuid.clone()),
            ("rill_version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
        ]);
        let mut recorder = Recorder::create(&path, &tap.outputs, about)?;
        let topics = tap.outputs.len();
        note!("rill: recording {topics} output(s) of {} into {}; Ctrl-C ends it", tap.name, path.display());
        let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let deadline = limit.map(|l| tokio::time::Instant::now() + l);
        let until = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(until);
        let mut written = 0u64;
        // (A failure ends the recording too: the file is finished first.)
        let mut failed = None;
        let why = loop {
            let frame = tokio::select! {
                frame = tap.next() => match frame {
                    Ok(frame) => frame,
                    Err(e) => {
                        failed = Some(e);
                        break "the tap failed";
                    }
                },
                _ = interrupt.recv() => break "interrupted",
                _ = terminate.recv() => break "terminated",
                _ = &mut until => break "the duration is over",
            };
            let Some(mut frame) = frame else { break "the dataflow ended" };
            if let Some(count) = args.count {
                frame.samples.truncate(count.saturating_sub(written) as usize);
            }
            written += frame.samples.len() as u64;
            if let Err(e) = tokio::task::block_in_place(|| recorder.write(&frame)) {
                failed = Some(e.into());
                break "it could not write";
            }
            if args.count.is_some_and(|c| written >= c) {
                break "the count is reached";
            }
        };
        tap.close().await;
        let stats = tokio::task::block_in_place(|| recorder.finish())?;
        if args.json {
            let line = serde_json::json!({
                "file": path, "messages": stats.messages, "bytes": stats.bytes,
                "dropped": stats.dropped, "cut": stats.cut, "topics": stats.per_topic,
            });
            println!("{line}");
        } else {
            let outputs = if topics == 1 { "output" } else { "outputs" };
            let (n, bytes, file) = (stats.messages, stats.bytes, path.display());
            println!("recorded {n} messages ({bytes} bytes) of {topics} {outputs} into {file} ({why})");
        }
        if stats.dropped > 0 {
            note!(
                "rill: {} messages were skipped: the recording could not keep up (a slow disk or link)",
                stats.dropped
            );
        }
        if stats.cut > 0 {
            let max = rill_proto::tap::MAX_TAP_PREVIEW;
            note!("rill: {} messages were longer than {max} bytes and were recorded cut to that length", stats.cut);
        }
        match failed {
            Some(e) => Err(e),
            None => Ok::<_, anyhow::Error>(()),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// The recording (an MCAP file from `rill record`).
    recording: PathBuf,
    /// The dataflow to run; the producers of recorded outputs are replaced by the recording.
    dataflow: PathBuf,
    /// Playback speed: 2 plays twice as fast, 0.5 at half speed.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Only these recorded outputs, as NODE/OUTPUT (comma-separated; default:
    /// every recorded output the dataflow has).
    #[arg(long, value_delimiter = ',')]
    outputs: Vec<String>,
    #[command(flatten)]
    flags: crate::run::RunFlags,
}

/// Runs the dataflow here, as `rill run` does, with replay nodes in place
/// of the recorded producers.
pub fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        anyhow::bail!("--rate must be a positive number (1 plays in real time), not {}", args.rate);
    }
    let recording =
        args.recording.canonicalize().with_context(|| format!("cannot open {}", args.recording.display()))?;
    let recorded = rill_record::recorded(&recording)?;
    let Some((mut dataflow, base_dir)) = crate::output::load_dataflow(&args.dataflow)? else {
        return Ok(ExitCode::FAILURE);
    };
    let program = std::env::current_exe().context("cannot find the rill binary to run replay nodes with")?;
    let wanted = (!args.outputs.is_empty()).then_some(args.outputs.as_slice());
    let rate = args.rate;
    let replaced =
        rill_record::replace_producers(&mut dataflow, &recording, &recorded, wanted, |node, outputs, start| {
            let args = [
                "replay-node".to_owned(),
                recording.display().to_string(),
                "--node".into(),
                node.to_owned(),
                "--outputs".into(),
                outputs.join(","),
                "--start-ns".into(),
                start.to_string(),
                "--rate".into(),
                rate.to_string(),
            ];
            (program.display().to_string(), args.to_vec())
        })?;
    for (node, outputs) in &replaced.nodes {
        note!("rill: node `{node}` replays {} from {}", outputs.join(", "), args.recording.display());
    }
    if !replaced.skipped.is_empty() {
        note!("rill: not replayed (the dataflow has no such output): {}", replaced.skipped.join(", "));
    }
    args.flags.run(dataflow, base_dir)
}

/// The node `rill replay` puts in place of a recorded producer (not for
/// direct use).
#[derive(clap::Args)]
pub struct ReplayNodeArgs {
    recording: PathBuf,
    #[arg(long)]
    node: String,
    #[arg(long, value_delimiter = ',')]
    outputs: Vec<String>,
    /// The recording's time zero (shared by every replay node of a run).
    #[arg(long)]
    start_ns: u64,
    #[arg(long)]
    rate: f64,
}

/// Sends this node's recorded messages, each at its recorded time from the
/// start (divided by the rate), until they are all sent or Stop.
pub fn replay_node(args: ReplayNodeArgs) -> anyhow::Result<ExitCode> {
    let mut node = rill_node::Node::from_env()?;
    let topics: Vec<String> = args.outputs.iter().map(|o| format!("{}/{o}", args.node)).collect();
    let started = Instant::now();
    let mut sent = 0u64;
    for message in Messages::open(&args.recording, &topics)? {
        let message = message?;
        let offset = message.log_time.saturating_sub(args.start_ns) as f64 / 1e9 / args.rate;
        let due = started + Duration::try_from_secs_f64(offset).unwrap_or(Duration::ZERO);
        loop {
            let left = due.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match node.recv_timeout(left) {
                Ok(rill_node::Event::Stop) | Err(rill_node::RecvError::Finished) => {
                    println!("stopped after replaying {sent} messages");
                    return Ok(ExitCode::SUCCESS);
                }
                _ => {}
            }
        }
        // Topics are `node/output`; node ids have no `/`.
        let output = message.topic.split_once('/').map_or(message.topic.as_str(), |(_, o)| o);
        node.send_output(output, &message.data)?;
        sent += 1;
    }
    println!("replayed {sent} messages");
    Ok(ExitCode::SUCCESS)
}
