//! `rill topic`: the outputs of a running dataflow (`NODE/OUTPUT`), who
//! consumes them and what they carried.

use std::process::ExitCode;

use rill_proto::coord::{ControlRequest, ControlResponse, Topic};

use crate::access::ControlAccess;

#[derive(clap::Subcommand)]
pub enum TopicCommand {
    /// Every output of a dataflow, its machine, consumers and messages so far.
    List {
        /// The dataflow's name or uuid.
        dataflow: String,
        /// `{"uuid","name","topics": [...]}` on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        coordinator: ControlAccess,
    },
    /// Print what an output sends, as it sends it (size, send time, latency, a preview).
    Echo {
        /// The dataflow's name or uuid.
        dataflow: String,
        /// The output, as NODE/OUTPUT.
        topic: String,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Payload bytes shown per message.
        #[arg(long, default_value_t = 64)]
        bytes: u64,
        /// One JSON object per message on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        coordinator: ControlAccess,
    },
    /// The rate an output sends at, every second: average, min/max interval, std-dev.
    Hz {
        /// The dataflow's name or uuid.
        dataflow: String,
        /// The output, as NODE/OUTPUT.
        topic: String,
        /// Intervals the figures are computed over (the latest ones).
        #[arg(long, default_value_t = 1000)]
        window: usize,
        /// Stop after this many reports.
        #[arg(long)]
        count: Option<u64>,
        /// One JSON object per report on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        coordinator: ControlAccess,
    },
    /// One output: its producer, machine, each consumer's queue, received and dropped.
    Info {
        /// The dataflow's name or uuid.
        dataflow: String,
        /// The output, as NODE/OUTPUT.
        topic: String,
        /// The topic as JSON on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        coordinator: ControlAccess,
    },
}

pub fn run(command: TopicCommand) -> anyhow::Result<ExitCode> {
    match command {
        TopicCommand::Echo { dataflow, topic, count, bytes, json, coordinator } => {
            crate::remote::runtime()?.block_on(echo(&coordinator, &dataflow, topic, count, bytes, json))?;
            Ok(ExitCode::SUCCESS)
        }
        TopicCommand::Hz { dataflow, topic, window, count, json, coordinator } => {
            crate::remote::runtime()?.block_on(hz(&coordinator, &dataflow, topic, window, count, json))?;
            Ok(ExitCode::SUCCESS)
        }
        TopicCommand::List { dataflow, json, coordinator } => {
            let (uuid, name, topics) = topics(&coordinator, &dataflow)?;
            if json {
                println!("{}", serde_json::json!({"uuid": uuid, "name": name, "topics": topics}));
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<[String; 5]> = topics
                .iter()
                .map(|t| {
                    let consumers: Vec<String> =
                        t.consumers.iter().map(|c| format!("{}/{}", c.node, c.input)).collect();
                    [
                        t.name.clone(),
                        t.machine.clone(),
                        consumers.join(", "),
                        t.messages.to_string(),
                        t.bytes.to_string(),
                    ]
                })
                .collect();
            match rows.is_empty() {
                true => println!("dataflow {name} has no outputs"),
                false => crate::remote::print_table(["TOPIC", "MACHINE", "CONSUMERS", "MESSAGES", "BYTES"], &rows),
            }
            Ok(ExitCode::SUCCESS)
        }
        TopicCommand::Info { dataflow, topic, json, coordinator } => {
            let (_, name, topics) = topics(&coordinator, &dataflow)?;
            let Some(found) = topics.iter().find(|t| t.name == topic) else {
                let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
                let hint = rill_core::did_you_mean(&topic, names.iter().copied(), "outputs");
                anyhow::bail!(
                    "dataflow {name} has no output `{topic}`{hint} (outputs are NODE/OUTPUT: `rill topic list {name}`)"
                );
            };
            if json {
                println!("{}", serde_json::json!(found));
            } else {
                print_info(found);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn topics(coordinator: &ControlAccess, dataflow: &str) -> anyhow::Result<(String, String, Vec<Topic>)> {
    let request = ControlRequest::Topics { dataflow: dataflow.to_owned() };
    match crate::remote::request(coordinator, request)? {
        ControlResponse::Topics { uuid, name, topics } => Ok((uuid, name, topics)),
        ControlResponse::Error { message, .. } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected reply from the coordinator: {other:?}"),
    }
}

fn print_info(topic: &Topic) {
    println!("topic     {}", topic.name);
    println!("producer  node {} on {}", topic.node, topic.machine);
    println!("sent      {} messages, {} bytes", topic.messages, topic.bytes);
    if topic.consumers.is_empty() {
        println!("consumers none");
        return;
    }
    let rows: Vec<[String; 5]> = topic
        .consumers
        .iter()
        .map(|c| {
            [
                format!("{}/{}", c.node, c.input),
                c.machine.clone(),
                c.queue_size.to_string(),
                c.received.to_string(),
                c.dropped.to_string(),
            ]
        })
        .collect();
    println!();
    crate::remote::print_table(["CONSUMER", "MACHINE", "QUEUE", "RECEIVED", "DROPPED"], &rows);
}

/// Prints each message of `topic` until `count` were printed or the
/// dataflow ended.
async fn echo(
    access: &ControlAccess,
    dataflow: &str,
    topic: String,
    count: Option<u64>,
    bytes: u64,
    json: bool,
) -> anyhow::Result<()> {
    let mut tap = crate::tap::Tap::open(access, dataflow, vec![topic], (bytes, rill_proto::tap::TAP_EVERY_US)).await?;
    let mut printed = 0u64;
    while count.is_none_or(|c| printed < c) {
        let Some(frame) = tap.next().await? else {
            eprintln!("rill: dataflow {} ended", tap.name);
            break;
        };
        skipped(frame.dropped);
        for sample in frame.samples.iter().take(count.map_or(usize::MAX, |c| (c - printed) as usize)) {
            let latency_us = sample.received_ns.saturating_sub(sample.timestamp_ns) as f64 / 1e3;
            let topic = tap.topic(sample.output);
            if json {
                let text = std::str::from_utf8(&sample.data).ok();
                let line = serde_json::json!({
                    "topic": topic,
                    "size": sample.size,
                    "timestamp_ns": sample.timestamp_ns,
                    "received_ns": sample.received_ns,
                    "latency_us": latency_us,
                    "text": text,
                    "hex": rill_proto::tap::hex(&sample.data),
                    "truncated": (sample.data.len() as u64) < sample.size,
                    "skipped_before": sample.skipped,
                });
                println!("{line}");
            } else {
                println!(
                    "{} UTC  {topic}  {} B  latency {:.3} ms  {}",
                    clock(sample.timestamp_ns),
                    sample.size,
                    latency_us / 1e3,
                    rill_proto::tap::preview_text(&sample.data, sample.size)
                );
            }
            printed += 1;
        }
    }
    tap.close().await;
    Ok(())
}

/// Prints `topic`'s rate every second until `count` reports or the end.
async fn hz(
    access: &ControlAccess,
    dataflow: &str,
    topic: String,
    window: usize,
    count: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    let mut tap =
        crate::tap::Tap::open(access, dataflow, vec![topic.clone()], (0, rill_proto::tap::TAP_EVERY_US)).await?;
    let mut rates = rill_proto::tap::RateWindow::new(window);
    let mut reports = 0u64;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.tick().await;
    while count.is_none_or(|c| reports < c) {
        tokio::select! {
            frame = tap.next() => {
                let Some(frame) = frame? else {
                    eprintln!("rill: dataflow {} ended", tap.name);
                    break;
                };
                skipped(frame.dropped);
                // The producer's send times: the output's own pace, not the tap's.
                frame.samples.iter().for_each(|s| rates.push(s.timestamp_ns, s.skipped));
            }
            _ = tick.tick() => {
                match rates.rate() {
                    Some(r) if json => println!(
                        "{}",
                        serde_json::json!({
                            "topic": topic,
                            "rate_hz": r.rate_hz,
                            "min_s": r.min_s,
                            "max_s": r.max_s,
                            "std_dev_s": r.std_dev_s,
                            "window": r.window,
                        })
                    ),
                    Some(r) => println!(
                        "average rate: {:.3} Hz\n\tmin: {:.6}s max: {:.6}s std dev: {:.6}s window: {}",
                        r.rate_hz, r.min_s, r.max_s, r.std_dev_s, r.window
                    ),
                    None => {
                        eprintln!("rill: no messages on {topic} yet");
                        continue;
                    }
                }
                reports += 1;
            }
        }
    }
    tap.close().await;
    Ok(())
}

/// Says that the tap skipped messages (it could not keep up).
fn skipped(dropped: u64) {
    if dropped > 0 {
        eprintln!("rill: {dropped} messages skipped: the tap could not keep up");
    }
}

/// `HH:MM:SS.micros` (UTC) of a Unix time in ns.
fn clock(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let micros = (ns % 1_000_000_000) / 1_000;
    format!("{:02}:{:02}:{:02}.{micros:06}", (secs / 3600) % 24, (secs / 60) % 60, secs % 60)
}
