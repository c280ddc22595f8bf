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
