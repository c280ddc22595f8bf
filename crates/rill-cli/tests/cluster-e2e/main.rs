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
    let file =
        net.cluster_yml(&[(0, "m1", "root", "role=camera"), (1, "m2", "root", "gpu=true"), (2, "m3", "root", "")]);
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

    // The file changes: m3 gets a label, m2 leaves the file. `up` restarts
    // m3's daemon with a token granting the label; m2 keeps running until down.
    let changed = net.cluster_yml(&[(0, "m1", "root", "role=camera"), (2, "m3", "root", "zone=b")]);
    let again = net.run(&["cluster", "up", changed.to_str().unwrap()], UP_LIMIT);
    assert_eq!(again.code, Some(0), "{again}");
    assert!(again.stdout.lines().any(|l| l.starts_with("Starting daemon on m1 (") && l.ends_with("already connected")));
    assert!(again.stdout.lines().any(|l| l.starts_with("Starting daemon on m3 (") && l.ends_with("OK")), "{again}");
    let json = net.run(&["cluster", "status", "--json"], CLI_LIMIT).json();
    let m3 = json["machines"].as_array().expect("machines").iter().find(|m| m["id"] == "m3").cloned().expect("m3");
    assert_eq!(m3["labels"], serde_json::json!({"zone": "b"}), "{json}");
    assert!(net.rill_processes(1).iter().any(|(_, cmd)| cmd.contains(" daemon ")), "m2 still runs");

    // Down: nothing of rill on any host, no coordinator, tokens revoked.
    let down = net.run(&["cluster", "down", "--json"], Duration::from_secs(60));
    assert_eq!(down.code, Some(0), "{down}");
    assert_eq!(down.json()["dataflows_stopped"], serde_json::json!(["app"]), "{down}");
    for index in 0..3 {
        let left = net.rill_processes(index);
        assert!(left.is_empty(), "rill processes left on {}: {left:?}\n{down}", net.hosts[index].name);
        assert!(
            net.read_file(index, &format!("/root/.local/state/rill/cluster-6013-m{}/join.token", index + 1)).is_none()
        );
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
    assert!(line("oldrill").contains("rill 0.0.9") && line("oldrill").contains("rill 0.1.0"), "{up}");
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
        machine["problems"]
            .as_array()
            .expect("problems")
            .iter()
            .map(|p| p["kind"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert!(problems("nosudo").iter().any(|p| p == "sudo_refused" || p == "no_sudo"), "{check}");
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

#[test]
fn a_pending_dataflow_starts_when_its_machine_joins_and_up_again_starts_only_what_is_missing() {
    let Some(mut net) = Net::new() else { return };
    for k in 1..=3 {
        net.boot(k, &HostSpec::default());
    }
    net.power_off(2);
    let file = net.cluster_yml(&[(0, "m1", "root", ""), (1, "m2", "root", ""), (2, "m3", "root", "")]);
    let file = file.to_str().unwrap();
    let up = net.run(&["cluster", "up", file], UP_LIMIT);
    assert_eq!(up.code, Some(1), "{up}");
    assert!(up.stderr.contains("2 of 3 daemons connected; failed: m3"), "{up}");
    assert_eq!(connected(&net), ["m1", "m2"]);

    let node = test_node();
    let flow = net.write(
        "flow.yml",
        &format!(
            "nodes:\n  - id: src\n    path: {node}\n    args: host burst-sleep 3600 3:8\n    outputs: [out]\n    \
             deploy:\n      machine: m1\n  - id: sink\n    path: {node}\n    args: host print\n    inputs:\n      in: src/out\n    \
             deploy:\n      machine: m3\n"
        ),
    );
    let flow = flow.to_str().unwrap();
    let refused = net.run(&["start", flow, "--name", "now"], CLI_LIMIT);
    assert_eq!(refused.code, Some(1), "without --wait-for-daemons the error is immediate: {refused}");
    assert!(refused.stderr.contains("no matching daemon for machine id \"m3\""), "{refused}");
    let start = net.run(&["start", flow, "--name", "app", "--wait-for-daemons", "2m", "--json"], CLI_LIMIT);
    assert_eq!(start.code, Some(0), "{start}");
    assert_eq!(start.json()["status"], "pending", "{start}");
    // A pending dataflow restarted keeps waiting, for the rest of its wait.
    let restart = net.run(&["restart", "app", "--json"], CLI_LIMIT);
    assert_eq!(restart.code, Some(0), "{restart}");
    let list = net.run(&["list"], CLI_LIMIT);
    let row = list.stdout.lines().rfind(|l| l.contains(" app ")).unwrap_or_default().to_owned();
    assert!(
        row.contains("pending") && row.contains("waiting: node `sink`: no matching daemon for machine id \"m3\""),
        "{list}"
    );

    // m3's host comes back; `up` again starts only its daemon.
    net.power_on(2);
    let again = net.run(&["cluster", "up", file], UP_LIMIT);
    assert_eq!(again.code, Some(0), "{again}");
    for id in ["m1", "m2"] {
        assert!(again.stdout.contains(&format!("Starting daemon on {id} (root@10.77.{}.1", net.n)), "{again}");
        assert!(
            again.stdout.lines().any(|l| l.contains(&format!(" {id} (")) && l.ends_with("already connected")),
            "{again}"
        );
    }
    assert!(
        again.stdout.contains("Starting daemon on m3 (") && again.stdout.contains("All 3 daemons connected"),
        "{again}"
    );
    assert_eq!(
        net.rill_processes(0).iter().filter(|(_, cmd)| cmd.contains(" daemon ")).count(),
        1,
        "still one daemon on h1"
    );
    poll_until("the pending dataflow started once m3 joined", Duration::from_secs(30), || {
        logs(&net, "app").contains("[sink] input in len=8 seq=2")
    });
    assert!(logs(&net, "app").contains("[sink] host h3"));

    // A machine cut off the network is shown as not connected, then back.
    net.cut(0);
    poll_until("status shows m1 not connected", Duration::from_secs(20), || connected(&net) == ["m2", "m3"]);
    net.restore(0);
    poll_until("m1 reconnects", Duration::from_secs(40), || connected(&net) == ["m1", "m2", "m3"]);

    // A daemon that crashed is started again by `up`, with its enrolled identity.
    let daemon = net.rill_processes(1).into_iter().find(|(_, cmd)| cmd.contains(" daemon ")).expect("m2's daemon");
    net.kill(1, daemon.0);
    poll_until("status shows m2 not connected", Duration::from_secs(20), || connected(&net) == ["m1", "m3"]);
    let again = net.run(&["cluster", "up", file], UP_LIMIT);
    assert_eq!(again.code, Some(0), "{again}");
    assert!(again.stdout.lines().any(|l| l.starts_with("Starting daemon on m2 (") && l.ends_with("OK")), "{again}");

    // A wait that runs out fails with what it waited for.
    let nowhere = net.write(
        "nowhere.yml",
        &format!("nodes:\n  - id: lost\n    path: {node}\n    args: wait-stop\n    deploy:\n      machine: m9\n"),
    );
    let start = net.run(&["start", nowhere.to_str().unwrap(), "--name", "late", "--wait-for-daemons", "2s"], CLI_LIMIT);
    assert_eq!(start.code, Some(0), "{start}");
    poll_until("the wait ran out", Duration::from_secs(15), || {
        let list = net.run(&["list", "--json"], CLI_LIMIT).json();
        list["dataflows"].as_array().expect("dataflows").iter().any(|d| {
            d["name"] == "late"
                && d["status"] == "failed"
                && d["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("no daemon to run it on in time") && r.contains("m9"))
        })
    });

    // A coordinator that died: `down` still stops the daemons, and keeps
    // the tokens it could not revoke so that `up` brings everything back.
    let coordinator = net.coordinator_pid().expect("the coordinator's pid is recorded");
    harness::kill_pid(coordinator);
    let down = net.run(&["cluster", "down"], Duration::from_secs(60));
    assert_eq!(down.code, Some(0), "{down}");
    assert!(down.stdout.contains("join tokens stay valid"), "{down}");
    for index in 0..3 {
        assert!(net.rill_processes(index).is_empty(), "{:?}", net.rill_processes(index));
    }
    let up = net.run(&["cluster", "up", file], UP_LIMIT);
    assert_eq!(up.code, Some(0), "{up}");
    assert!(up.stdout.contains("All 3 daemons connected"), "{up}");

    let down = net.run(&["cluster", "down"], Duration::from_secs(60));
    assert_eq!(down.code, Some(0), "{down}");
    for index in 0..3 {
        assert!(net.rill_processes(index).is_empty(), "{:?}", net.rill_processes(index));
    }
}

/// A network of hosts that boot systemd, or `None` (skipped, with the
/// reason) where that cannot run; in CI it must.
fn systemd_net() -> Option<Net> {
    let net = Net::new()?;
    if let Some(why) = harness::systemd_unavailable() {
        assert!(std::env::var("CI").is_err(), "the systemd host tests cannot run in CI: {why}");
        eprintln!("skipped: {why}");
        return None;
    }
    Some(net)
}

/// `systemd_net` with hosts 0 and 1 booted.
fn two_systemd_hosts() -> Option<Net> {
    let mut net = systemd_net()?;
    for k in 1..=2 {
        net.boot(k, &HostSpec { systemd: true, ..Default::default() });
    }
    Some(net)
}

/// The end of every services test: `uninstall` and `down` both succeed.
fn uninstall_and_down(net: &Net) {
    let uninstall = net.run(&["cluster", "uninstall"], UP_LIMIT);
    assert_eq!(uninstall.code, Some(0), "{uninstall}");
    // A daemon stops by itself on SIGTERM: systemd's SIGKILL means it hung.
    assert!(!uninstall.stdout.contains("systemd killed it"), "{uninstall}\n{}", net.logs());
    let down = net.run(&["cluster", "down"], Duration::from_secs(60));
    assert_eq!(down.code, Some(0), "{down}");
}

/// Installs the services of `s1` and `s2` (hosts 0 and 1) and starts `app`:
/// `src` on s1 sends a count every 100 ms to `sink` on s2.
fn install_two(net: &Net) -> std::path::PathBuf {
    let file = net.cluster_yml(&[(0, "s1", "root", ""), (1, "s2", "root", "")]);
    let install = net.run(&["cluster", "install", file.to_str().unwrap()], UP_LIMIT);
    assert_eq!(install.code, Some(0), "{install}");
    file
}

fn start_counts(net: &Net) {
    let node = test_node();
    let flow = net.write(
        "flow.yml",
        &format!(
            "nodes:\n  - id: src\n    path: {node}\n    args: count-send\n    inputs:\n      t: rill/timer/millis/100\n    \
             outputs: [out]\n    deploy:\n      machine: s1\n  - id: sink\n    path: {node}\n    args: print\n    \
             inputs:\n      in: src/out\n    deploy:\n      machine: s2\n"
        ),
    );
    let start = net.run(&["start", flow.to_str().unwrap(), "--name", "app"], CLI_LIMIT);
    assert_eq!(start.code, Some(0), "{start}");
}

#[test]
fn install_runs_every_daemon_as_a_systemd_service_that_survives_a_crash_and_uninstall_removes_it() {
    let Some(net) = two_systemd_hosts() else { return };
    for index in 0..2 {
        assert_eq!(net.root_ssh(index, "systemctl is-system-running --wait").trim(), "running");
    }
    let file = net.cluster_yml(&[(0, "s1", "root", "role=edge"), (1, "s2", "root", "")]);
    let file = file.to_str().unwrap();
    let install = net.run(&["cluster", "install", file], UP_LIMIT);
    assert_eq!(install.code, Some(0), "{install}");
    for (id, host) in [("s1", &net.hosts[0]), ("s2", &net.hosts[1])] {
        assert!(
            install.stdout.contains(&format!("Installing rill-daemon-{id}.service on root@{}... OK", host.ip)),
            "{install}"
        );
    }
    assert!(install.stdout.contains("2/2 succeeded."), "{install}");
    assert_eq!(connected(&net), ["s1", "s2"]);
    for (index, id) in [(0, "s1"), (1, "s2")] {
        let unit = format!("/etc/systemd/system/rill-daemon-{id}.service");
        let verify = net.root_ssh(index, &format!("systemd-analyze verify {unit} 2>&1; echo rc=$?"));
        assert_eq!(verify.trim(), "rc=0", "systemd-analyze verify says nothing about {unit}");
        assert_eq!(net.root_ssh(index, &format!("systemctl is-active rill-daemon-{id}")).trim(), "active");
        let text = net.root_ssh(index, &format!("cat {unit}"));
        assert!(!text.contains("rill1."), "no token in the unit:\n{text}");
        assert_eq!(net.root_ssh(index, &format!("stat -c '%a %U' /etc/rill/{id}.token")).trim(), "600 root");
        assert!(net.root_ssh(index, &format!("cat /etc/rill/{id}.token")).starts_with(&format!("rill1.{id}.")));
        assert_eq!(net.root_ssh(index, &format!("stat -c '%a' /var/lib/rill/{id}")).trim(), "700");
    }

    // kill -9: systemd restarts the daemon (RestartSec=5), it registers again.
    let daemon = net.rill_processes(0).into_iter().find(|(_, cmd)| cmd.contains(" daemon ")).expect("s1's daemon");
    net.kill(0, daemon.0);
    poll_until("systemd restarted s1's daemon and it registered", Duration::from_secs(30), || {
        net.rill_processes(0).iter().any(|(pid, cmd)| cmd.contains(" daemon ") && *pid != daemon.0)
            && connected(&net) == ["s1", "s2"]
    });

    // Again: the same result (a new service token; the daemons connect again).
    let again = net.run(&["cluster", "install", file], UP_LIMIT);
    assert_eq!(again.code, Some(0), "{again}");
    assert!(again.stdout.contains("2/2 succeeded."), "{again}");

    let uninstall = net.run(&["cluster", "uninstall", "--json"], UP_LIMIT);
    assert_eq!(uninstall.code, Some(0), "{uninstall}");
    assert_eq!(uninstall.json()["succeeded"], 2, "{uninstall}");
    for (index, id) in [(0, "s1"), (1, "s2")] {
        let left = net.root_ssh(
            index,
            &format!(
                "ls /etc/systemd/system/rill-daemon-{id}.service /etc/rill/{id}.token /var/lib/rill/{id} 2>/dev/null; \
                 systemctl is-active rill-daemon-{id} || true"
            ),
        );
        assert_eq!(left.trim(), "inactive", "nothing of the service is left on {id}");
        assert!(net.rill_processes(index).is_empty(), "{:?}", net.rill_processes(index));
    }
    let tokens = net.run(&["token", "list", "--json"], CLI_LIMIT).json();
    assert!(tokens["tokens"].as_array().expect("tokens").iter().all(|t| t["state"] == "revoked"), "{tokens}");
    let down = net.run(&["cluster", "down"], Duration::from_secs(60));
    assert_eq!(down.code, Some(0), "{down}");
}

/// A copy of the rill under test with another version: the build stamp
/// written into a copy of the binary (what `rill --version` reads), as a
/// release pipeline would stamp a new build.
fn stamped_build(net: &Net, stamp: &str) -> std::path::PathBuf {
    let mut bytes = std::fs::read(env!("CARGO_BIN_EXE_rill")).expect("the rill binary");
    let marker = b"RILL-BUILD-STAMP:";
    let at =
        bytes.windows(marker.len()).position(|w| w == marker).expect("the binary has a stamp marker") + marker.len();
    bytes[at..at + stamp.len()].copy_from_slice(stamp.as_bytes());
    let path = net.write(&format!("rill-{stamp}"), "");
    std::fs::write(&path, bytes).expect("write the stamped build");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("executable");
    path
}

/// `machine id -> version` from `cluster status --json`.
fn versions(net: &Net) -> std::collections::BTreeMap<String, String> {
    let json = net.run(&["cluster", "status", "--json"], CLI_LIMIT).json();
    json["machines"]
        .as_array()
        .expect("machines")
        .iter()
        .filter_map(|m| Some((m["id"].as_str()?.to_owned(), m["version"].as_str()?.to_owned())))
        .collect()
}

#[test]
fn upgrade_rolls_a_new_build_out_one_machine_at_a_time_and_a_broken_one_is_rolled_back() {
    let Some(net) = two_systemd_hosts() else { return };
    let file = net.cluster_yml(&[(0, "s1", "root", ""), (1, "s2", "root", "")]);
    let install = net.run(&["cluster", "install", file.to_str().unwrap()], UP_LIMIT);
    assert_eq!(install.code, Some(0), "{install}");
    let old = env!("CARGO_PKG_VERSION").to_owned();
    let new = format!("{old}+b2");
    // A dataflow on both hosts; s2's node prints a timer's ticks.
    let node = test_node();
    let flow = net.write(
        "flow.yml",
        &format!(
            "nodes:\n  - id: idle\n    path: {node}\n    args: wait-stop\n    deploy:\n      machine: s1\n  \
             - id: ticks\n    path: {node}\n    args: print\n    inputs:\n      t: rill/timer/millis/100\n    deploy:\n      machine: s2\n"
        ),
    );
    let start = net.run(&["start", flow.to_str().unwrap(), "--name", "app"], CLI_LIMIT);
    assert_eq!(start.code, Some(0), "{start}");
    let ticks = |net: &Net| logs(net, "app").lines().filter(|l| l.starts_with("[ticks] input t")).count();
    poll_until("ticks arrive", Duration::from_secs(20), || ticks(&net) > 0);

    let b2 = stamped_build(&net, "b2");
    let upgrade = std::thread::scope(|scope| {
        let run = scope
            .spawn(|| net.run(&["cluster", "upgrade", "--binary", b2.to_str().unwrap()], Duration::from_secs(180)));
        // While s1 is on the new build and s2 not yet, s2's node kept delivering.
        let before = ticks(&net);
        poll_until("s1 runs the new build before s2 does", Duration::from_secs(60), || {
            let v = versions(&net);
            v.get("s1") == Some(&new) && v.get("s2") == Some(&old)
        });
        assert!(ticks(&net) > before, "s2 delivered while s1 was upgraded");
        run.join().expect("upgrade ran")
    });
    assert_eq!(upgrade.code, Some(0), "{upgrade}");
    for id in ["s1", "s2"] {
        assert!(upgrade.stdout.contains(&format!("Upgrading {id} (root@")), "{upgrade}");
    }
    assert!(upgrade.stdout.contains(&format!("Check binary... OK (rill {new}, protocol")), "{upgrade}");
    assert!(upgrade.stdout.contains("2/2 upgraded."), "{upgrade}");
    assert_eq!(versions(&net), [("s1".to_owned(), new.clone()), ("s2".to_owned(), new.clone())].into());
    let after = ticks(&net);
    poll_until("the dataflow delivers after the upgrade", Duration::from_secs(30), || ticks(&net) > after);
    let running = |net: &Net| {
        let list = net.run(&["list", "--json"], CLI_LIMIT).json();
        let app = list["dataflows"].as_array().expect("dataflows").iter().rev().find(|d| d["name"] == "app").cloned();
        let app = app.expect("app is listed");
        app["status"] == "running" && ["idle", "ticks"].iter().all(|n| app["nodes"][n]["state"] == "running")
    };
    assert!(
        running(&net),
        "every node runs again after the upgrade: {}",
        net.run(&["list", "--json"], CLI_LIMIT).stdout
    );

    // --rollback: every machine back to the binary it had before.
    let rollback = net.run(&["cluster", "upgrade", "--rollback"], Duration::from_secs(120));
    assert_eq!(rollback.code, Some(0), "{rollback}");
    assert!(rollback.stdout.contains("2/2 restored."), "{rollback}");
    assert!(
        running(&net),
        "every node runs again after the rollback: {}",
        net.run(&["list", "--json"], CLI_LIMIT).stdout
    );
    assert_eq!(versions(&net), [("s1".to_owned(), old.clone()), ("s2".to_owned(), old.clone())].into());

    // A build of another protocol (a stand-in that only answers `version`):
    // refused on the first machine before anything changes there.
    let other =
        net.write("rill-other-protocol", &format!("#!/bin/sh\necho '{{\"version\":\"{old}+p3\",\"protocol\":3}}'\n"));
    let refused = net.run(&["cluster", "upgrade", "--binary", other.to_str().unwrap()], Duration::from_secs(60));
    assert_eq!(refused.code, Some(1), "{refused}");
    assert!(
        refused.stdout.contains("speaks protocol 3") && refused.stdout.contains("upgrade the coordinator first"),
        "{refused}"
    );
    assert!(!refused.stdout.contains("Swap binary"), "nothing was swapped: {refused}");
    assert_eq!(versions(&net), [("s1".to_owned(), old.clone()), ("s2".to_owned(), old.clone())].into());

    // A broken build (a stand-in, named as such: it answers `version` but
    // no daemon starts): the first machine is rolled back, the rollout stops.
    let broken = net.write(
        "rill-broken",
        &format!(
            "#!/bin/sh\n[ \"$1\" = version ] && {{ echo '{{\"version\":\"{old}+broken\",\"protocol\":{}}}'; exit 0; }}\nexit 1\n",
            rill_proto::coord::COORD_PROTOCOL_VERSION
        ),
    );
    let broken_upgrade = net.run(
        &["cluster", "upgrade", "--binary", broken.to_str().unwrap(), "--timeout", "8s"],
        Duration::from_secs(120),
    );
    assert_eq!(broken_upgrade.code, Some(1), "{broken_upgrade}");
    assert!(broken_upgrade.stdout.contains("Roll back... OK"), "{broken_upgrade}");
    assert!(!broken_upgrade.stdout.contains("Upgrading s2"), "s2 was not touched: {broken_upgrade}");
    assert!(broken_upgrade.stderr.contains("s1 was rolled back to its previous binary"), "{broken_upgrade}");
    assert_eq!(versions(&net), [("s1".to_owned(), old.clone()), ("s2".to_owned(), old)].into());

    uninstall_and_down(&net);
}

#[test]
fn a_host_that_loses_power_or_reboots_comes_back_by_systemd_and_the_dataflow_delivers_again() {
    let Some(mut net) = two_systemd_hosts() else { return };
    install_two(&net);
    // s1 sends a count every 100 ms to s2.
    start_counts(&net);
    let received = |net: &Net| logs(net, "app").lines().filter(|l| l.starts_with("[sink] input in")).count();
    poll_until("s2 receives from s1", Duration::from_secs(30), || received(&net) > 5);

    // Power cut: link down, every process of s1 killed at once; then it boots again.
    net.power_off(0);
    poll_until("s1 is shown not connected", Duration::from_secs(20), || connected(&net) == ["s2"]);
    let before = received(&net);
    net.power_on(0);
    poll_until("systemd started s1's daemon at boot and it registered", Duration::from_secs(60), || {
        connected(&net) == ["s1", "s2"]
    });
    poll_until("the source was re-spawned on s1 and s2 receives again", Duration::from_secs(60), || {
        received(&net) > before + 5
    });

    // A graceful reboot: systemd stops the daemon (SIGTERM), which says it
    // is shutting down, so its node is lost, not finished; it comes back.
    // (Pids restart in the host's new PID namespace: the daemon's id tells
    // the re-spawn apart.)
    let (daemon, _) = daemon_and_pid(&net, "s1", "src");
    let before = received(&net);
    net.reboot(0);
    poll_until("the source was re-spawned after the reboot and s2 receives again", Duration::from_secs(90), || {
        let (now, pid) = daemon_and_pid(&net, "s1", "src");
        now.is_some() && now != daemon && pid.is_some() && received(&net) > before + 5
    });
    let daemon = daemon.expect("s1's daemon before the reboot");
    let coordinator_log =
        std::fs::read_to_string(net.path("home/state/rill/coordinator-6013.log")).expect("coordinator log");
    assert!(
        coordinator_log.contains(&format!("daemon {daemon} is shutting down")),
        "s1's daemon said it was shutting down before the reboot:\n{coordinator_log}"
    );
    uninstall_and_down(&net);
}

/// `(daemon id of machine, pid of node)` from the coordinator's view.
fn daemon_and_pid(net: &Net, machine: &str, node: &str) -> (Option<String>, Option<u64>) {
    let status = net.run(&["status", "--json"], CLI_LIMIT).json();
    let daemon = status["daemons"]
        .as_array()
        .expect("daemons")
        .iter()
        .find(|d| d["machine_id"] == machine)
        .and_then(|d| d["daemon_id"].as_str().map(str::to_owned));
    let list = net.run(&["list", "--json"], CLI_LIMIT).json();
    let app = list["dataflows"].as_array().expect("dataflows").iter().rev().find(|d| d["name"] == "app").cloned();
    let pid = app.and_then(|a| a["nodes"][node]["pid"].as_u64());
    (daemon, pid)
}

#[test]
fn a_blip_changes_nothing_and_a_partition_marks_nodes_lost_that_run_on_and_come_back_unrestarted() {
    let Some(net) = two_systemd_hosts() else { return };
    install_two(&net);
    start_counts(&net);
    let received = |net: &Net| logs(net, "app").lines().filter(|l| l.starts_with("[sink] input in")).count();
    poll_until("s2 receives from s1", Duration::from_secs(30), || received(&net) > 5);
    let (daemon, pid) = daemon_and_pid(&net, "s1", "src");
    assert!(daemon.is_some() && pid.is_some());

    // A blip shorter than silence detection (3 heartbeats): nothing changes.
    net.cut(0);
    std::thread::sleep(Duration::from_millis(1000)); // the fault's length, not a wait for a result
    net.restore(0);
    let before = received(&net);
    poll_until("data flows again after the blip", Duration::from_secs(20), || received(&net) > before + 5);
    assert_eq!(daemon_and_pid(&net, "s1", "src"), (daemon.clone(), pid), "same daemon, same node");

    // A partition: s1's node is lost to the coordinator but keeps running there.
    net.cut(0);
    poll_until("s1's node is marked lost", Duration::from_secs(20), || {
        let list = net.run(&["list", "--json"], CLI_LIMIT).json();
        list["dataflows"][0]["nodes"]["src"]["state"] == "lost"
    });
    let pid = pid.expect("src pid") as u32;
    let on_host = |net: &Net| net.rill_processes(0).iter().any(|(_, cmd)| cmd.contains("count-send"));
    assert!(on_host(&net), "the node keeps running on s1 while it is cut off");
    net.restore(0);
    poll_until("s1's node is running again", Duration::from_secs(40), || {
        let list = net.run(&["list", "--json"], CLI_LIMIT).json();
        list["dataflows"][0]["nodes"]["src"]["state"] == "running"
    });
    assert_eq!(daemon_and_pid(&net, "s1", "src").1, Some(u64::from(pid)), "not re-spawned: the same process");
    let before = received(&net);
    poll_until("data flows again after the partition", Duration::from_secs(20), || received(&net) > before + 5);
    uninstall_and_down(&net);
}

#[test]
fn a_restarted_coordinator_reclaims_the_services_and_their_running_nodes() {
    let Some(net) = two_systemd_hosts() else { return };
    let file = install_two(&net);
    let file = file.to_str().unwrap();
    start_counts(&net);
    poll_until("both nodes run", Duration::from_secs(30), || {
        daemon_and_pid(&net, "s1", "src").1.is_some() && daemon_and_pid(&net, "s2", "sink").1.is_some()
    });
    let (src, sink) = (daemon_and_pid(&net, "s1", "src").1, daemon_and_pid(&net, "s2", "sink").1);

    // The coordinator stops (SIGTERM) and `cluster up` starts it again from its store.
    let coordinator = net.coordinator_pid().expect("recorded");
    harness::terminate_pid(coordinator);
    let up = net.run(&["cluster", "up", file], UP_LIMIT);
    assert_eq!(up.code, Some(0), "{up}");
    assert!(up.stdout.contains("Starting coordinator on"), "a new coordinator: {up}");
    poll_until("the services reconnected and reported their nodes", Duration::from_secs(60), || {
        let list = net.run(&["list", "--json"], CLI_LIMIT).json();
        let app = &list["dataflows"][0];
        app["status"] == "running"
            && app["nodes"]["src"]["state"] == "running"
            && app["nodes"]["sink"]["state"] == "running"
    });
    assert_eq!(daemon_and_pid(&net, "s1", "src").1, src, "the same source process: reclaimed, not re-spawned");
    assert_eq!(daemon_and_pid(&net, "s2", "sink").1, sink, "the same sink process");
    uninstall_and_down(&net);
}

#[test]
fn scp_and_http_run_nodes_on_hosts_that_never_had_their_binary_and_a_tampered_one_is_refused() {
    let Some(net) = two_systemd_hosts() else { return };
    install_two(&net);
    // The node binaries exist only here: a systemd host's root is its own
    // disk, and it shares only the build directory.
    let ship = net.path("ship");
    std::fs::create_dir(&ship).expect("ship dir");
    for name in ["src-node", "sink-node"] {
        std::fs::copy(test_node(), ship.join(name)).expect("copy the node");
        for index in 0..2 {
            let path = ship.join(name).display().to_string();
            let seen = net.root_ssh(index, &format!("test -e {path} && echo present || echo absent"));
            assert_eq!(seen.trim(), "absent", "{path} on host {index}");
        }
    }
    let flow = net.write(
        "shipped.yml",
        "nodes:\n  - id: src\n    path: ./ship/src-node\n    args: count-send\n    inputs:\n      t: rill/timer/millis/100\n    \
         outputs: [out]\n    deploy:\n      machine: s1\n      distribute: scp\n  - id: sink\n    path: ./ship/sink-node\n    \
         args: print\n    inputs:\n      in: src/out\n    deploy:\n      machine: s2\n      distribute: http\n",
    );
    let flow = flow.to_str().unwrap();
    // No --cluster: the SSH details are the ones `cluster install` recorded.
    let start = net.run(&["start", flow, "--name", "app"], CLI_LIMIT);
    assert_eq!(start.code, Some(0), "{start}");
    assert!(start.stderr.contains("Pushed node `src` to s1"), "{start}");
    assert!(start.stderr.contains("Uploaded node `sink`"), "{start}");
    let received = |net: &Net| logs(net, "app").lines().filter(|l| l.starts_with("[sink] input in")).count();
    poll_until("s2's shipped sink receives from s1's shipped source", Duration::from_secs(30), || received(&net) > 5);
    let sha = rill_auth::digest::sha256_file(&ship.join("src-node")).expect("hash the node");
    for (index, id) in [(0, "s1"), (1, "s2")] {
        let exe = net.root_ssh(index, "for p in /proc/[0-9]*; do readlink $p/exe; done 2>/dev/null | grep artifacts");
        assert!(exe.contains(&format!("/var/lib/rill/{id}/artifacts/{sha}")), "{id} runs the shipped binary: {exe}");
    }

    // s1's copy is changed on the host: at the next start of the node it is
    // refused, not run.
    let pushed = format!("/var/lib/rill/s1/artifacts/{sha}");
    // (Replaced, not written in place: a running binary cannot be written.)
    net.root_ssh(
        0,
        &format!("cp {pushed} {pushed}.t && printf 'X' | dd of={pushed}.t bs=1 seek=4096 conv=notrunc 2>/dev/null && mv {pushed}.t {pushed}"),
    );
    let restart = net.run(&["restart", "app"], CLI_LIMIT);
    assert_eq!(restart.code, Some(0), "{restart}");
    poll_until("the changed binary is refused", Duration::from_secs(30), || {
        let list = net.run(&["list", "--json"], CLI_LIMIT).json();
        let app = list["dataflows"].as_array().expect("dataflows").iter().rev().find(|d| d["name"] == "app").cloned();
        let src = app.map(|a| a["nodes"]["src"].clone()).unwrap_or_default();
        src["state"] == "failed" && src["reason"].as_str().is_some_and(|r| r.contains("refused, not run"))
    });
    // (With its source refused, the sink's input closes and `app` ends.)
    // A new start pushes a good copy over it.
    let again = net.run(&["start", flow, "--name", "app2"], CLI_LIMIT);
    assert_eq!(again.code, Some(0), "{again}");
    assert!(again.stderr.contains("Pushed node `src` to s1") && !again.stderr.contains("already there"), "{again}");
    poll_until("app2 delivers", Duration::from_secs(30), || {
        logs(&net, "app2").lines().filter(|l| l.starts_with("[sink] input in")).count() > 5
    });
    uninstall_and_down(&net);
}

#[test]
fn a_node_that_takes_its_daemon_down_at_once_is_re_spawned_at_most_once_per_recovery_backoff() {
    let Some(net) = two_systemd_hosts() else { return };
    // The waits are configurable: a 10 s backoff instead of 30 s keeps the
    // test short and still well apart from systemd's 5 s restarts.
    let file = net.cluster_yml(&[(0, "s1", "root", ""), (1, "s2", "root", "")]);
    let text = std::fs::read_to_string(&file)
        .expect("cluster.yml")
        .replace("  port: 6013\n", "  port: 6013\n  recovery_backoff: 10\n");
    std::fs::write(&file, text).expect("cluster.yml");
    let install = net.run(&["cluster", "install", file.to_str().unwrap()], UP_LIMIT);
    assert_eq!(install.code, Some(0), "{install}");
    let node = test_node();
    let flow = net.write(
        "crashloop.yml",
        &format!(
            "nodes:\n  - id: src\n    path: {node}\n    args: count-send\n    inputs:\n      t: rill/timer/millis/100\n    \
             outputs: [out]\n    deploy:\n      machine: s2\n  - id: crasher\n    path: {node}\n    args: kill-daemon\n    \
             inputs:\n      in: src/out\n    deploy:\n      machine: s1\n"
        ),
    );
    let start = net.run(&["start", flow.to_str().unwrap(), "--name", "app"], CLI_LIMIT);
    assert_eq!(start.code, Some(0), "{start}");
    let started = Instant::now();
    // For 25 s: when each recovery happened, which daemons s1 registered
    // as (systemd restarts it 5 s after each kill), and whether the node
    // was seen `lost` while its daemon was back (held back by the backoff).
    let coordinator_log = net.path("home/state/rill/coordinator-6013.log");
    let mut recoveries: Vec<Duration> = Vec::new();
    let mut held_back = false;
    while started.elapsed() < Duration::from_secs(25) {
        let log = std::fs::read_to_string(&coordinator_log).unwrap_or_default();
        let count = log.lines().filter(|l| l.contains("auto-recovery: re-spawning crasher")).count();
        while recoveries.len() < count {
            recoveries.push(started.elapsed());
        }
        let (daemon, _) = daemon_and_pid(&net, "s1", "crasher");
        let list = net.run(&["list", "--json"], CLI_LIMIT).json();
        if daemon.is_some() && list["dataflows"][0]["nodes"]["crasher"]["state"] == "lost" {
            held_back = true;
        }
        std::thread::sleep(Duration::from_millis(500)); // the sampling period, not a wait for a result
    }
    let log = std::fs::read_to_string(&coordinator_log).unwrap_or_default();
    let kills = log.lines().filter(|l| l.contains("daemon unreachable (s1-")).count();
    assert!(kills >= 3, "the node took s1's daemon down again and again: {kills} times\n{}", net.logs());
    assert!(!recoveries.is_empty(), "it was recovered at all\n{}", net.logs());
    for pair in recoveries.windows(2) {
        // (Sampled about every 0.5 s: a little slack below the 10 s backoff.)
        assert!(pair[1] - pair[0] >= Duration::from_secs(9), "re-spawns {:?} apart: {recoveries:?}", pair[1] - pair[0]);
    }
    assert!(recoveries.len() <= 3, "at most once per 10 s in 25 s: {recoveries:?}");
    assert!(held_back, "`rill list` showed the node lost while its daemon was back, waiting for the backoff");
    let list = net.run(&["list", "--json"], CLI_LIMIT).json();
    assert_ne!(list["dataflows"][0]["status"], "failed", "{list}");
    uninstall_and_down(&net);
}
