//! `cluster.yml`: the machines of a managed cluster and where its
//! coordinator listens, parsed with every problem located, as dataflow files are.
//!
//! What is checked here protects the SSH commands built from the file:
//! a host or user starting with `-` would be read by `ssh` as an option
//! (`-oProxyCommand=...` runs a command on this machine), so it is refused
//! before anything runs.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::diagnostics::{Collector, Diagnostic, Diagnostics};
use crate::ids::{self, ID_HINT};
use crate::read::Reader;
use crate::yaml::{self, Node, Pos, Value};

/// The coordinator port when `coordinator.port` is not given.
pub const DEFAULT_CLUSTER_PORT: u16 = 6013;

const TOP_FIELDS: &[&str] = &["coordinator", "machines"];
const COORDINATOR_FIELDS: &[&str] = &["addr", "port", "lost_timeout", "recovery_backoff"];
const MACHINE_FIELDS: &[&str] = &["id", "host", "user", "port", "identity_file", "labels", "service_user"];

/// A validated `cluster.yml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterFile {
    /// The address the coordinator binds to and daemons connect to.
    pub addr: IpAddr,
    pub port: u16,
    /// The coordinator's `--lost-timeout` and `--recovery-backoff` (`None`:
    /// its defaults, 60 s and 30 s).
    pub lost_timeout: Option<std::time::Duration>,
    pub recovery_backoff: Option<std::time::Duration>,
    pub machines: Vec<Machine>,
}

/// One machine: where to SSH and what its daemon is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// `--machine-id` of its daemon (`deploy.machine` in dataflows).
    pub id: String,
    pub host: String,
    /// SSH user; `None`: ssh's default (the current user, or `~/.ssh/config`).
    pub user: Option<String>,
    /// SSH port; `None`: ssh's default.
    pub ssh_port: Option<u16>,
    pub identity_file: Option<PathBuf>,
    pub labels: BTreeMap<String, String>,
    /// The user a daemon installed as a systemd service runs as
    /// (`rill cluster install`); `None`: the SSH user.
    pub service_user: Option<String>,
}

impl Machine {
    /// `user@host`, or `host`, as messages show it.
    pub fn destination(&self) -> String {
        match &self.user {
            Some(user) => format!("{user}@{}", self.host),
            None => self.host.clone(),
        }
    }

    /// The name of this machine's join token: its id, with `.` (which a
    /// token cannot hold) as `_`.
    pub fn token_name(&self) -> String {
        token_name(&self.id)
    }
}

/// The join-token name for machine `id` (see [`Machine::token_name`]).
pub fn token_name(id: &str) -> String {
    id.replace('.', "_")
}

/// Longest machine id: it names a join token (at most 64 characters).
const MAX_ID: usize = 64;

impl ClusterFile {
    /// Parse + validate; `file` is only used in messages.
    pub fn parse(text: &str, file: &Path) -> Result<ClusterFile, Diagnostics> {
        let root = yaml::parse(text).map_err(|error| {
            let message = format!("invalid YAML: {}", error.message);
            Diagnostics(vec![Diagnostic::at(file, error.pos, message, None)])
        })?;
        let mut reader = Reader { source: text, report: Collector::new(file) };
        let cluster = cluster(&mut reader, &root);
        reader.report.finish(cluster)?.ok_or_else(|| Diagnostics(Vec::new()))
    }

    /// Reads the file, then parses it.
    pub fn load(path: &Path) -> Result<ClusterFile, Diagnostics> {
        match std::fs::read_to_string(path) {
            Ok(text) => ClusterFile::parse(&text, path),
            Err(error) => {
                let message = format!("cannot read cluster file `{}`: {error}", path.display());
                Err(Diagnostics(vec![Diagnostic::at(path, Pos::UNKNOWN, message, None)]))
            }
        }
    }

    pub fn machine(&self, id: &str) -> Option<&Machine> {
        self.machines.iter().find(|m| m.id == id)
    }
}

fn cluster(r: &mut Reader, root: &Node) -> Option<ClusterFile> {
    let entries = match &root.value {
        Value::Map(entries) => entries,
        Value::Null => {
            let hint = "a cluster file needs `coordinator:` (with `addr`) and a `machines:` list";
            r.error_hint(root.pos, "the cluster file is empty", hint);
            return None;
        }
        _ => return r.wrong_type(root, "the cluster file", "a mapping with `coordinator` and `machines`"),
    };
    let fields = r.fields(entries, TOP_FIELDS, "the cluster file");
    let coordinator = match fields.get("coordinator") {
        Some(value) => coordinator(r, value),
        None => {
            let hint = "add `coordinator:` with `addr: <IP address to listen on>`";
            r.error_hint(root.pos, "missing field `coordinator`", hint);
            None
        }
    };
    let machines = match fields.entry("machines") {
        Some(entry) => machines(r, entry.value, entry.key.pos),
        None => {
            r.error_hint(root.pos, "missing field `machines`", "add a `machines:` list with at least one machine");
            Vec::new()
        }
    };
    let Coordinator { addr, port, lost_timeout, recovery_backoff } = coordinator?;
    Some(ClusterFile { addr, port, lost_timeout, recovery_backoff, machines })
}

struct Coordinator {
    addr: IpAddr,
    port: u16,
    lost_timeout: Option<std::time::Duration>,
    recovery_backoff: Option<std::time::Duration>,
}

fn coordinator(r: &mut Reader, value: &Node) -> Option<Coordinator> {
    let entries = r.map(value, "`coordinator`")?;
    let fields = r.fields(entries, COORDINATOR_FIELDS, "`coordinator`");
    let lost_timeout = fields.get("lost_timeout").and_then(|node| wait(r, node, "lost_timeout"));
    let recovery_backoff = fields.get("recovery_backoff").and_then(|node| wait(r, node, "recovery_backoff"));
    let port = match fields.get("port") {
        Some(node) => port(r, node, "`coordinator.port`"),
        None => Some(DEFAULT_CLUSTER_PORT),
    };
    let Some(addr_node) = fields.get("addr") else {
        r.error_hint(value.pos, "`coordinator` is missing the required field `addr`", "add `addr: <IP address>`");
        return None;
    };
    let text = r.text(addr_node, "`coordinator.addr`")?;
    let addr = match text.parse::<IpAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            let hint =
                "the coordinator binds to this address and daemons connect to it: an IP address such as 10.0.0.1";
            r.error_hint(addr_node.pos, format!("`coordinator.addr` `{text}` is not an IP address"), hint);
            return None;
        }
    };
    Some(Coordinator { addr, port: port?, lost_timeout, recovery_backoff })
}

/// A positive duration: seconds as a number, or a string with a unit.
fn wait(r: &mut Reader, node: &Node, field: &str) -> Option<std::time::Duration> {
    let spelled = node.scalar_text(r.source).unwrap_or_default();
    let parsed = match &node.value {
        Value::Int(secs) => crate::duration::delay_from_number(*secs as f64, &spelled, &format!("coordinator.{field}")),
        Value::Float(secs) => crate::duration::delay_from_number(*secs, &spelled, &format!("coordinator.{field}")),
        Value::Str(text) => crate::duration::parse_delay(text, &format!("coordinator.{field}")),
        _ => {
            return r.wrong_type(
                node,
                &format!("`coordinator.{field}`"),
                "a number of seconds or a string like \"30s\"",
            );
        }
    };
    match parsed {
        Ok(duration) if !duration.is_zero() => Some(duration),
        _ => {
            let hint = "a positive number of seconds (`30`) or a string with a unit: \"500ms\", \"30s\", \"2m\"";
            r.error_hint(node.pos, format!("invalid `coordinator.{field}` `{spelled}`"), hint);
            None
        }
    }
}

fn port(r: &mut Reader, node: &Node, what: &str) -> Option<u16> {
    match &node.value {
        Value::Int(n) if (1..=65535).contains(n) => u16::try_from(*n).ok(),
        _ => r.wrong_type(node, what, "a port number from 1 to 65535"),
    }
}

fn machines(r: &mut Reader, value: &Node, key_pos: Pos) -> Vec<Machine> {
    let Some(items) = r.list(value, "`machines`") else { return Vec::new() };
    if items.is_empty() {
        r.error_hint(key_pos, "`machines` is empty", "add at least one machine (`id` and `host`)");
    }
    // Ids of every entry, valid or not, so a duplicate is reported even
    // when the first one has other problems.
    let mut seen: Vec<(String, Pos)> = Vec::new();
    let mut machines = Vec::new();
    for item in items {
        let (machine, id) = machine(r, item);
        if let Some((id, id_pos)) = id {
            if let Some((_, first_pos)) = seen.iter().find(|(seen, _)| *seen == id) {
                let hint = format!("first used at line {}; machine ids must be unique", first_pos.line);
                r.error_hint(id_pos, format!("duplicate machine id `{id}`"), hint);
                continue;
            }
            if let Some((first, _)) = seen.iter().find(|(seen, _)| token_name(seen) == token_name(&id)) {
                let hint = "a machine's join token is named after it, with `.` as `_`; rename one of them";
                r.error_hint(id_pos, format!("machine ids `{first}` and `{id}` would share a join token"), hint);
                continue;
            }
            seen.push((id, id_pos));
        }
        machines.extend(machine);
    }
    machines
}

/// The machine (if it has no problems) and its id (if it has a usable one).
fn machine(r: &mut Reader, item: &Node) -> (Option<Machine>, Option<(String, Pos)>) {
    let Value::Map(entries) = &item.value else {
        return (r.wrong_type(item, "each entry of `machines`", "a mapping with `id` and `host`"), None);
    };
    let owner = format!("the machine at line {}", item.pos.line);
    let fields = r.fields(entries, MACHINE_FIELDS, &owner);
    let id = match fields.get("id") {
        None => {
            r.error_hint(item.pos, format!("{owner} is missing the required field `id`"), "add `id: <unique-name>`");
            None
        }
        Some(node) => {
            r.text(node, "machine `id`").and_then(|id| machine_id(r, &id, node.pos).then_some((id, node.pos)))
        }
    };
    let owner = match &id {
        Some((id, _)) => format!("machine `{id}`"),
        None => owner,
    };
    let host = match fields.get("host") {
        None => {
            let hint = "add `host: <hostname or IP address SSH reaches>`";
            r.error_hint(item.pos, format!("{owner} is missing the required field `host`"), hint);
            None
        }
        Some(node) => {
            r.text(node, &format!("`host` of {owner}")).and_then(|h| ssh_word(r, &h, node.pos, "host", &owner))
        }
    };
    let user = fields
        .get("user")
        .and_then(|node| r.optional_text(node, &format!("`user` of {owner}")).map(|u| (u, node.pos)))
        .and_then(|(user, pos)| ssh_word(r, &user, pos, "user", &owner));
    let service_user = fields
        .get("service_user")
        .and_then(|node| r.optional_text(node, &format!("`service_user` of {owner}")).map(|u| (u, node.pos)))
        .and_then(|(user, pos)| ssh_word(r, &user, pos, "service_user", &owner));
    let ssh_port = fields.get("port").and_then(|node| port(r, node, &format!("`port` of {owner}")));
    let identity_file = fields.get("identity_file").and_then(|node| {
        let path = r.optional_text(node, &format!("`identity_file` of {owner}"))?;
        if path.trim().is_empty() || path.contains('\0') {
            r.error(node.pos, format!("`identity_file` of {owner} is empty"));
            return None;
        }
        Some(PathBuf::from(path))
    });
    let labels = fields.get("labels").map(|node| labels(r, node, &owner)).unwrap_or_default();
    let machine = match (&id, host) {
        (Some((id, _)), Some(host)) => {
            Some(Machine { id: id.clone(), host, user, ssh_port, identity_file, labels, service_user })
        }
        _ => None,
    };
    (machine, id)
}

/// Reports a bad machine id; `true` if it is usable.
fn machine_id(r: &mut Reader, id: &str, pos: Pos) -> bool {
    if id.is_empty() {
        r.error_hint(pos, "machine id is empty", "add `id: <unique-name>`");
        return false;
    }
    if !ids::is_valid(id) {
        r.error_hint(pos, format!("invalid machine id `{id}`"), ID_HINT);
        return false;
    }
    if id.len() > MAX_ID {
        r.error(pos, format!("machine id `{id}` is longer than {MAX_ID} characters"));
        return false;
    }
    true
}

/// A host or user as ssh gets it: never an option, never several words.
fn ssh_word(r: &mut Reader, text: &str, pos: Pos, what: &str, owner: &str) -> Option<String> {
    if text.trim().is_empty() {
        r.error(pos, format!("`{what}` of {owner} is empty"));
        return None;
    }
    if text.starts_with('-') {
        let hint = "ssh would read it as an option (e.g. -oProxyCommand runs a command here); write the plain name";
        r.error_hint(pos, format!("`{what}` of {owner} starts with `-`: `{text}`"), hint);
        return None;
    }
    // Letters, digits and what hostnames, IP addresses (`[::1]`, `fe80::1%eth0`)
    // and user names use: nothing a shell or an ssh `%h` expansion could read.
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']' | '%');
    if let Some(c) = text.chars().find(|c| !allowed(*c)) {
        let hint = match what {
            "host" => "a hostname or IP address; the user goes in `user`",
            _ => "a plain user name",
        };
        r.error_hint(pos, format!("`{what}` of {owner} contains {c:?}: `{}`", text.escape_debug()), hint);
        return None;
    }
    Some(text.to_owned())
}

fn labels(r: &mut Reader, node: &Node, owner: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let Some(entries) = r.map(node, &format!("`labels` of {owner}")) else { return labels };
    for entry in r.entries(entries, "label", owner) {
        if !ids::is_valid(&entry.name) {
            let hint = "label keys may contain only letters, digits, '_', '-' and '.'";
            r.error_hint(entry.key.pos, format!("invalid label key `{}` in {owner}", entry.name.escape_debug()), hint);
            continue;
        }
        let Some(value) = r.scalar(entry.value, &format!("label `{}` of {owner}", entry.name)) else { continue };
        // As `--labels` reads it (trimmed), so the token grants what the daemon claims.
        let value = value.trim().to_owned();
        if let Some(c) = value.chars().find(|c| c.is_control() || *c == ',') {
            let hint = "labels travel as `key=value,key=value`: no commas or control characters in a value";
            r.error_hint(entry.value.pos, format!("label `{}` of {owner} contains {c:?}", entry.name), hint);
            continue;
        }
        labels.insert(entry.name, value);
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterFile, Diagnostics> {
        ClusterFile::parse(text, Path::new("cluster.yml"))
    }

    fn errors(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(c) => panic!("expected errors, parsed {c:?}"),
            Err(d) => d.0.iter().map(|d| format!("{}:{}: {}", d.line, d.column, d.message)).collect(),
        }
    }

    #[test]
    fn the_reference_example_parses_with_defaults() {
        let c = parse(
            "coordinator:\n  addr: 10.0.0.1\nmachines:\n  - id: robot\n    host: 10.0.0.2\n    user: ubuntu\n    \
             labels:\n      gpu: \" true \"\n      n: 3\n  - id: gpu-server\n    host: gpu.lan\n    port: 2222\n    \
             identity_file: ~/.ssh/id_fleet\n",
        )
        .unwrap();
        assert_eq!(c.addr, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(c.port, 6013);
        assert_eq!(c.machines.len(), 2);
        assert_eq!(c.machines[0].destination(), "ubuntu@10.0.0.2");
        assert_eq!(c.machines[0].labels["gpu"], "true");
        assert_eq!(c.machines[0].labels["n"], "3");
        assert_eq!(c.machines[1].ssh_port, Some(2222));
        assert_eq!(c.machines[1].user, None);
        assert_eq!(c.machines[1].identity_file.as_deref(), Some(Path::new("~/.ssh/id_fleet")));
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_position() {
        let text = "coordinator:\n  addr: somewhere\n  port: 0\n  tls: yes\nmachines:\n  - id: a\n    host: -oProxyCommand=touch /tmp/x\n  \
                    - id: a\n    host: h2\n  - id: bad id\n    host: h3\n    user: -l\n  - host: h4\n  - id: b.c\n    host: h5\n  \
                    - id: b_c\n    host: h6\n    labels:\n      \"k k\": v\n      ok: \"a,b\"\n";
        let found = errors(text);
        let expect = [
            "2:9: `coordinator.addr` `somewhere` is not an IP address",
            "3:9: `coordinator.port` must be a port number from 1 to 65535, found `0`",
            "4:3: unknown field `tls` in `coordinator`",
            "7:11: `host` of machine `a` starts with `-`: `-oProxyCommand=touch /tmp/x`",
            "8:9: duplicate machine id `a`",
            "10:9: invalid machine id `bad id`",
            "12:11: `user` of the machine at line 10 starts with `-`: `-l`",
            "13:5: the machine at line 13 is missing the required field `id`",
            "16:9: machine ids `b.c` and `b_c` would share a join token",
            "19:7: invalid label key `k k` in machine `b_c`",
            "20:11: label `ok` of machine `b_c` contains ','",
        ];
        assert_eq!(found, expect, "{found:#?}");
    }

    #[test]
    fn a_file_without_machines_or_coordinator_says_what_to_add() {
        assert_eq!(errors(""), ["1:1: the cluster file is empty"]);
        let found = errors("coordinator:\n  addr: 10.0.0.1\nmachines: []\nextra: 1\n");
        assert_eq!(found, ["3:1: `machines` is empty", "4:1: unknown field `extra` in the cluster file"]);
        let found = errors("machines:\n  - id: a\n    host: \"\"\n");
        assert_eq!(found, ["1:1: missing field `coordinator`", "3:11: `host` of machine `a` is empty"]);
    }

    #[test]
    fn hosts_and_users_are_single_plain_words() {
        for host in ["\"a b\"", "\"a;b\"", "\"u@h\"", "\"$(x)\"", "\"a|b\"", "\"a&b\"", "\"h*\"", "\"<h>\""] {
            let found = errors(&format!("coordinator:\n  addr: ::1\nmachines:\n  - id: a\n    host: {host}\n"));
            assert_eq!(found.len(), 1, "{host}: {found:?}");
            assert!(found[0].contains("`host` of machine `a` contains"), "{found:?}");
        }
    }

    #[test]
    fn the_coordinator_waits_are_positive_durations() {
        let c = parse("coordinator:\n  addr: ::1\n  lost_timeout: 20\n  recovery_backoff: \"1.5s\"\nmachines:\n  - id: a\n    host: h\n")
            .unwrap();
        assert_eq!(c.lost_timeout, Some(std::time::Duration::from_secs(20)));
        assert_eq!(c.recovery_backoff, Some(std::time::Duration::from_millis(1500)));
        assert_eq!(parse("coordinator:\n  addr: ::1\nmachines:\n  - id: a\n    host: h\n").unwrap().lost_timeout, None);
        let found = errors(
            "coordinator:\n  addr: ::1\n  lost_timeout: 0\n  recovery_backoff: soon\nmachines:\n  - id: a\n    host: h\n",
        );
        assert_eq!(
            found,
            ["3:17: invalid `coordinator.lost_timeout` `0`", "4:21: invalid `coordinator.recovery_backoff` `soon`"]
        );
    }
}
