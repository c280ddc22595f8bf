//! `rill cluster` end to end on real SSH hosts (network namespaces with
//! their own root and sshd; see harness.rs). Needs root; CI is root.

mod harness;

use std::time::{Duration, Instant};

use harness::{HostSpec, Net, RillInstall, poll_until};

const UP_LIMIT: Duration = Duration::from_secs(90);
const CLI_LIMIT: Duration = Duration::from_secs(30);

fn test_node() -> String {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_rill")).with_file_name("rill-test-node");
    assert!(path.exists(), "{} is missing: run `cargo build --workspace` first (scripts/test.sh does)", path.display());
    path.display().to_string()
}

/// Machine ids of the connected daemons, from `cluster status --json`.
fn connected(net: &Net) -> Vec<String> {
    let out = net.run(&["cluster", "status", "--json"], CLI_LIMIT);
    assert_eq!(out.code, Some(0), "{out}");
    let json = out.json();
    let mut ids: Vec<String> = json["machines"]
        .as_array()
        .expect("machines")
        .iter()
        .filter(|m| m["connected"] == true)
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

/// The lines `rill logs NAME` prints.
fn logs(net: &Net, dataflow: &str) -> String {
    let out = net.run(&["logs", dataflow], CLI_LIMIT);
    assert_eq!(out.code, Some(0), "{out}");
    out.stdout
}

#[test]
fn cluster_up_places_nodes_on_the_right_hosts_restart_works_and_down_leaves_nothing() {
    let Some(mut net) = Net::new() else { return };
    for k in 1..=3 {
        net.boot(k, &HostSpec::default());
    }
    let file = net.cluster_yml(&[(0, "m1", "root", "role=camera"), (1, "m2", "root", "gpu=true"), (2, "m3", "root", "")]);
    let started = Instant::now();
    let up = net.run(&["cluster", "up", file.to_str().unwrap()], UP_LIMIT);
    let up_secs = started.elapsed().as_secs_f64();
    assert_eq!(up.code, Some(0), "{up}");
    for (id, ip) in [("m1", &net.hosts[0].ip), ("m2", &net.hosts[1].ip), ("m3", &net.hosts[2].ip)] {
        assert!(up.stdout.contains(&format!("Starting daemon on {id} (root@{ip})... OK")), "{up}");
    }
    assert!(up.stdout.contains("All 3 daemons connected"), "{up}");
    eprintln!("cluster up, 3 hosts: {up_secs:.1}s");

    // Status: every machine, its version and arch; enrolled with tokens.
    let status = net.run(&["cluster", "status", "--json"], CLI_LIMIT);
    let json = status.json();
    let machines = json["machines"].as_array().expect("machines");
    assert_eq!(machines.len(), 3, "{status}");
    for m in machines {
        assert_eq!(m["connected"], true, "{status}");
        assert_eq!(m["version"], env!("CARGO_PKG_VERSION"), "{status}");
        assert!(m["arch"].as_str().is_some_and(|a| !a.is_empty()), "{status}");
    }
    let tokens = net.run(&["token", "list", "--json"], CLI_LIMIT);
    for id in ["m1", "m2", "m3"] {
        let token = tokens.json()["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .find(|t| t["name"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no token {id}: {tokens}"));
        assert_eq!(token["state"], "enrolled", "{tokens}");
        assert_eq!(token["machine_id"], id, "{tokens}");
        assert_eq!(token["expires_ms"], serde_json::Value::Null, "cluster tokens do not expire: {tokens}");
    }
    let table = net.run(&["cluster", "status"], CLI_LIMIT);
    assert!(table.stdout.contains("3 of 3 machines connected"), "{table}");

    // Placement by machine and by labels; data from one host to another.
    let node = test_node();
    let flow = net.write(
        "flow.yml",
        &format!(
            "nodes:\n  - id: src\n    path: {node}\n    args: host burst-sleep 3600 5:16\n    outputs: [out]\n    \
             deploy:\n      machine: m1\n  - id: sink\n    path: {node}\n    args: host print\n    inputs:\n      in: src/out\n    \
             deploy:\n      labels:\n        gpu: \"true\"\n  - id: idle\n    path: {node}\n    args: host wait-stop\n    \
             deploy:\n      machine: m3\n"
        ),
    );
    let start = net.run(&["start", flow.to_str().unwrap(), "--name", "app", "--json"], CLI_LIMIT);
    assert_eq!(start.code, Some(0), "{start}");
    poll_until("the sink on h2 received all 5 messages from h1", Duration::from_secs(30), || {
        logs(&net, "app").contains("[sink] input in len=16 seq=4")
    });
    let text = logs(&net, "app");
    for line in ["[src] host h1", "[sink] host h2", "[idle] host h3"] {
        assert!(text.contains(line), "{line}:\n{text}");
    }
    poll_until("status counts the running nodes", Duration::from_secs(10), || {
        let json = net.run(&["cluster", "status", "--json"], CLI_LIMIT).json();
        json["machines"].as_array().expect("machines").iter().all(|m| m["nodes_running"] == 1)
    });

    // Restart: a new uuid, the nodes run again where they belong.
    let restart = net.run(&["cluster", "restart", "app", "--json"], CLI_LIMIT);
    assert_eq!(restart.code, Some(0), "{restart}");
    let new_uuid = restart.json()["new_uuid"].as_str().expect("new uuid").to_owned();
    poll_until("the restarted dataflow delivers again", Duration::from_secs(30), || {
        logs(&net, &new_uuid).contains("[sink] input in len=16 seq=4")
    });
    assert!(logs(&net, &new_uuid).contains("[src] host h1"));

    // Down: nothing of rill on any host, no coordinator, tokens revoked.
    let down = net.run(&["cluster", "down", "--json"], Duration::from_secs(60));
    assert_eq!(down.code, Some(0), "{down}");
    assert_eq!(down.json()["dataflows_stopped"], serde_json::json!(["app"]), "{down}");
    for index in 0..3 {
        let left = net.rill_processes(index);
        assert!(left.is_empty(), "rill processes left on {}: {left:?}\n{down}", net.hosts[index].name);
        assert!(net.read_file(index, "/root/.local/state/rill/cluster-m1/join.token").is_none());
    }
    let status = net.run(&["cluster", "status"], CLI_LIMIT);
    assert_ne!(status.code, Some(0), "no cluster any more: {status}");
    assert!(status.stderr.contains("no cluster"), "{status}");
}

#[test]
fn each_machine_with_a_gap_fails_with_its_own_error_while_the_others_come_up() {
    let Some(mut net) = Net::new() else { return };
    net.boot(1, &HostSpec::default());
    net.boot(2, &HostSpec { rill: RillInstall::None, ..Default::default() });
    let other = "#!/bin/sh\n# A stand-in for another release of rill: it only answers --version.\necho 'rill 0.0.9'\n";
    net.boot(3, &HostSpec { rill: RillInstall::Script(other.into()), ..Default::default() });
    net.boot(4, &HostSpec { user: Some("robot".into()), ..Default::default() });
    // m5's host was never booted: nothing answers at its address.
    let mut file = std::fs::read_to_string(net.cluster_yml(&[
        (0, "good", "root", ""),
        (1, "norill", "root", ""),
        (2, "oldrill", "root", ""),
        (3, "nosudo", "robot", ""),
    ]))
    .unwrap();
    file += &format!("  - id: gone\n    host: 10.77.{}.99\n    user: root\n", net.n);
    let file = net.write("cluster.yml", &file);
    let file = file.to_str().unwrap();

    let up = net.run(&["cluster", "up", file], UP_LIMIT);
    assert_eq!(up.code, Some(1), "{up}");
    let line = |id: &str| up.stderr.lines().find(|l| l.contains(&format!("on {id} ("))).unwrap_or("").to_owned();
    assert!(line("norill").contains("`rill` is not on the PATH"), "{up}");
    assert!(line("oldrill").contains("rill 0.0.9") && line("oldrill").contains("cluster upgrade"), "{up}");
    assert!(line("gone").contains("cannot reach root@10.77."), "{up}");
    assert!(up.stdout.contains("Starting daemon on good ("), "{up}");
    assert!(up.stdout.contains("Starting daemon on nosudo (robot@"), "a daemon needs no sudo: {up}");
    assert!(up.stderr.contains("2 of 5 daemons connected; failed: gone, norill, oldrill"), "{up}");
    assert_eq!(connected(&net), ["good", "nosudo"]);

    // The full preflight names the sudo gap of its machine too.
    let check = net.run(&["cluster", "check", file, "--ssh", "--json"], UP_LIMIT);
    assert_eq!(check.code, Some(1), "{check}");
    let json = check.json();
    let problems = |id: &str| -> Vec<String> {
        let machine = json["machines"].as_array().expect("machines").iter().find(|m| m["id"] == id).cloned();
        let machine = machine.unwrap_or_else(|| panic!("{id} missing: {check}"));
        machine["problems"].as_array().expect("problems").iter().map(|p| p["kind"].as_str().unwrap_or("").to_owned()).collect()
    };
    assert!(problems("nosudo").contains(&"sudo_refused".to_owned()), "{check}");
    assert_eq!(problems("norill")[0], "no_rill", "{check}");
    assert_eq!(problems("oldrill")[0], "other_version", "{check}");
    assert_eq!(problems("gone"), ["unreachable"], "{check}");

    let down = net.run(&["cluster", "down"], Duration::from_secs(90));
    // `gone` cannot be reached, so down reports it (and keeps the record).
    assert_eq!(down.code, Some(1), "{down}");
    assert!(down.stderr.contains("Stopping daemon on gone") && down.stderr.contains("could not stop gone"), "{down}");
    for index in [0, 3] {
        assert!(net.rill_processes(index).is_empty(), "{:?}", net.rill_processes(index));
    }
}
