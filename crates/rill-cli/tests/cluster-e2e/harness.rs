//! Test hosts: each a network namespace on a private bridge, with its own
//! root (an overlay over this machine's /, writes in a tmpfs), hostname,
//! PID namespace and sshd. `rill cluster` reaches them over real SSH.
//!
//! One [`Net`] per test: its own bridge `rill-tN` at 10.77.N.1/24 (the
//! coordinator binds there), hosts at 10.77.N.(10+k) with fixed MACs, no
//! default route, so nothing leaves the machine. A temporary SSH key, an
//! ssh config (given to rill as `RILL_SSH_CONFIG`) with its own
//! known_hosts, and XDG directories of its own for every `rill` it runs.
//! Dropping a `Net` stops everything it started (by PID) and, when the test
//! failed, prints the coordinator's log and every host's daemon log.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// Bridges in use by this test process (10.77.N.0/24 each).
static NEXT_NET: AtomicU8 = AtomicU8::new(1);

fn sh(cmd: &str) -> Output {
    Command::new("sh").arg("-c").arg(cmd).output().expect("sh runs")
}

/// Runs `cmd`, panicking with its output if it fails.
fn must(cmd: &str) {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends `signal` to `pid` (a process of this machine the test started)
/// and waits until it ended (gone, or a zombie nobody reaped yet).
fn signal_and_wait(pid: u32, signal: &str, limit: Duration) {
    must(&format!("kill -{signal} {pid}"));
    poll_until(&format!("process {pid} ended after SIG{signal}"), limit, || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(") ").is_none_or(|(_, rest)| rest.starts_with('Z'))
    });
}

/// SIGKILL (a crash).
pub fn kill_pid(pid: u32) {
    signal_and_wait(pid, "KILL", Duration::from_secs(10));
}

/// SIGTERM (a clean stop, as `systemctl stop` sends).
pub fn terminate_pid(pid: u32) {
    signal_and_wait(pid, "TERM", Duration::from_secs(30));
}

/// Why this machine cannot run the harness, if it cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("the cluster harness needs root (network namespaces, mounts)".into());
    }
    for tool in ["ip", "unshare", "ssh", "ssh-keygen", "/usr/sbin/sshd", "nft"] {
        if !sh(&format!("command -v {tool}")).status.success() {
            return Some(format!("`{tool}` is missing (scripts/test.sh installs openssh-server and nftables)"));
        }
    }
    // A name of its own: tests probe in parallel.
    static PROBES: AtomicU8 = AtomicU8::new(0);
    let probe = format!("rill-probe-{}-{}", std::process::id(), PROBES.fetch_add(1, Ordering::SeqCst));
    let ok = sh(&format!("ip netns add {probe} && ip netns del {probe}")).status.success();
    (!ok).then(|| "network namespaces are not available here".into())
}

/// Why this machine cannot boot systemd hosts, if it cannot.
pub fn systemd_unavailable() -> Option<String> {
    for tool in ["systemd-nspawn", "debootstrap"] {
        if !sh(&format!("command -v {tool}")).status.success() {
            return Some(format!("`{tool}` is missing (scripts/test.sh installs systemd-container and debootstrap)"));
        }
    }
    None
}

/// Becomes true within `limit`, or panics naming `what`.
pub fn poll_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What `rill` printed.
pub struct RillOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl RillOutput {
    pub fn json(&self) -> serde_json::Value {
        let line = self.stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or("null");
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

impl std::fmt::Display for RillOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

pub struct Host {
    pub name: String,
    pub ip: String,
    netns: String,
    veth: String,
    mac: String,
    files: PathBuf,
    mnt: PathBuf,
    init: Option<Child>,
    log: PathBuf,
    /// Boots systemd (see [`HostSpec::systemd`]).
    systemd: bool,
}

pub struct Net {
    pub n: u8,
    pub bridge: String,
    /// The bridge's address: where the coordinator listens.
    pub gateway: String,
    pub dir: tempfile::TempDir,
    pub hosts: Vec<Host>,
    init_script: PathBuf,
}

/// How a host is set up before it boots.
#[derive(Clone, Default)]
pub struct HostSpec {
    /// `/usr/local/bin/rill`: the binary under test (a link), a script, or none.
    pub rill: RillInstall,
    /// A user besides root that may log in with the test key (no sudo rights).
    pub user: Option<String>,
    /// Boot real systemd (systemd-nspawn on a Debian rootfs) instead of
    /// running sshd alone: for `cluster install`, services, reboots.
    pub systemd: bool,
}

#[derive(Clone, Default)]
pub enum RillInstall {
    #[default]
    UnderTest,
    /// A stand-in script (for a rill of another version).
    Script(String),
    None,
}

impl Net {
    /// A new private network, or `None` (with the reason printed) when this
    /// machine cannot make one.
    pub fn new() -> Option<Net> {
        if let Some(why) = unavailable() {
            // CI runs as root with everything installed: a skip there would hide the cluster path.
            assert!(std::env::var("CI").is_err(), "the cluster tests cannot run in CI: {why}");
            eprintln!("skipped: {why}");
            return None;
        }
        let n = NEXT_NET.fetch_add(1, Ordering::SeqCst);
        let bridge = format!("rill-t{n}");
        let gateway = format!("10.77.{n}.1");
        // A bridge of that name is a leftover of a killed run of this harness.
        let _ = sh(&format!("ip link del {bridge} 2>/dev/null"));
        must(&format!(
            "ip link add {bridge} type bridge && ip addr add {gateway}/24 dev {bridge} && \
             sysctl -qw net.ipv6.conf.{bridge}.disable_ipv6=1 && ip link set {bridge} up"
        ));
        let dir = tempfile::Builder::new().prefix("rill-net-").tempdir_in("/tmp").expect("temp dir");
        let key = dir.path().join("client_key");
        must(&format!("ssh-keygen -q -t ed25519 -N '' -C rill-test -f {}", key.display()));
        let config = format!(
            "Host *\n  IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {kh}\n  GlobalKnownHostsFile /dev/null\n",
            key = key.display(),
            kh = dir.path().join("known_hosts").display()
        );
        std::fs::write(dir.path().join("ssh_config"), config).expect("write ssh config");
        let init_script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cluster-e2e/host-init.sh");
        Some(Net { n, bridge, gateway, dir, hosts: Vec::new(), init_script })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A `rill` command with this network's XDG directories and ssh config.
    pub fn rill(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rill"));
        cmd.env("XDG_DATA_HOME", self.path("home/data"))
            .env("XDG_CONFIG_HOME", self.path("home/config"))
            .env("XDG_STATE_HOME", self.path("home/state"))
            .env("RILL_SSH_CONFIG", self.path("ssh_config"))
            .env_remove("RILL_TOKEN")
            .env_remove("RILL_COORDINATOR_FINGERPRINT")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `rill ARGS` to its end (bounded by `limit`).
    pub fn run(&self, args: &[&str], limit: Duration) -> RillOutput {
        let mut child =
            self.rill().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("rill starts");
        let (out, err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
        let read = |mut pipe: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                text
            })
        };
        let (out, err) = (read(Box::new(out)), read(Box::new(err)));
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = RillOutput {
            code: status.and_then(|s| s.code()),
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        };
        assert!(status.is_some(), "`rill {}` did not end within {limit:?}:\n{output}", args.join(" "));
        output
    }

    /// Writes `text` as a file in this network's directory; its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write file");
        path
    }

    /// Boots host number `k` (its IP ends in 10+k), set up as `spec` says.
    pub fn boot(&mut self, k: u8, spec: &HostSpec) -> usize {
        let name = format!("h{k}");
        let ip = format!("10.77.{}.{}", self.n, 10 + k);
        let files = self.path(&format!("{name}-files"));
        let _ = std::fs::remove_dir_all(&files);
        for dir in ["etc/ssh", "root/.ssh", "usr/local/bin"] {
            std::fs::create_dir_all(files.join(dir)).expect("host files");
        }
        must(&format!("ssh-keygen -q -t ed25519 -N '' -C {name} -f {}/etc/ssh/ssh_host_ed25519_key", files.display()));
        let sshd = format!(
            "ListenAddress {ip}\nHostKey /etc/ssh/ssh_host_ed25519_key\nUsePAM no\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nSubsystem sftp internal-sftp\nUseDNS no\nPidFile /run/sshd.pid\n"
        );
        std::fs::write(files.join("etc/ssh/sshd_config"), sshd).expect("sshd config");
        std::fs::write(files.join("etc/hostname"), format!("{name}\n")).expect("hostname");
        std::fs::write(files.join("etc/machine-id"), format!("{:032x}\n", 0x77_0000 + u32::from(k)))
            .expect("machine-id");
        let key = std::fs::read_to_string(self.path("client_key.pub")).expect("public key");
        std::fs::write(files.join("root/.ssh/authorized_keys"), &key).expect("authorized keys");
        must(&format!("chmod 700 {0}/root/.ssh && chmod 600 {0}/root/.ssh/authorized_keys", files.display()));
        match &spec.rill {
            RillInstall::UnderTest => {
                std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_rill"), files.join("usr/local/bin/rill")).expect("link");
            }
            RillInstall::Script(text) => {
                std::fs::write(files.join("usr/local/bin/rill"), text).expect("script");
                must(&format!("chmod 755 {}/usr/local/bin/rill", files.display()));
            }
            RillInstall::None => {}
        }
        let netns = format!("rill-t{}-{name}", self.n);
        let veth = format!("rv{}{name}", self.n);
        let mac = format!("02:77:00:00:{:02x}:{:02x}", self.n, k);
        let host = Host {
            name: name.clone(),
            ip,
            netns,
            veth,
            mac,
            files,
            mnt: self.path(&format!("{name}-mnt")),
            init: None,
            log: self.path(&format!("{name}-init.log")),
            systemd: spec.systemd,
        };
        self.hosts.push(host);
        let index = self.hosts.len() - 1;
        self.start(index);
        if let Some(user) = &spec.user {
            let home = format!("/home/{user}");
            self.root_ssh(
                index,
                &format!(
                    "useradd -m -s /bin/sh {user} && usermod -p '*' {user} && mkdir -p {home}/.ssh && \
                 cp /root/.ssh/authorized_keys {home}/.ssh/ && chown -R {user}: {home}/.ssh && chmod 700 {home}/.ssh"
                ),
            );
        }
        index
    }

    /// Creates the namespace and link, starts the host's init, waits for sshd.
    fn start(&mut self, index: usize) {
        let bridge = self.bridge.clone();
        let init_script = self.init_script.clone();
        let host = &mut self.hosts[index];
        let _ = sh(&format!("ip link del {} 2>/dev/null; ip netns del {} 2>/dev/null", host.veth, host.netns));
        must(&format!(
            "ip netns add {ns} && ip link add {veth} address 02:77:ff:00:{n:02x}:{k} type veth peer name eth0 netns {ns} && \
             ip -n {ns} link set eth0 address {mac} && ip link set {veth} master {bridge} up && \
             ip netns exec {ns} sysctl -qw net.ipv6.conf.all.disable_ipv6=1 && \
             ip -n {ns} addr add {ip}/24 dev eth0 && ip -n {ns} link set eth0 up && ip -n {ns} link set lo up",
            ns = host.netns,
            veth = host.veth,
            n = self.n,
            k = &host.name[1..],
            mac = host.mac,
            ip = host.ip,
        ));
        let log = std::fs::File::create(&host.log).expect("init log");
        let mut command = match host.systemd {
            false => {
                let mut command = Command::new("ip");
                command
                    .args(["netns", "exec", &host.netns, "unshare", "--mount", "--uts", "--ipc", "--pid", "--fork"])
                    .arg(&init_script)
                    .args([&host.name, &host.mnt.display().to_string(), &host.files.display().to_string()]);
                command
            }
            true => systemd_boot(host),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("host init starts");
        host.init = Some(child);
        let (ip, netns, name) = (host.ip.clone(), host.netns.clone(), host.name.clone());
        poll_until(&format!("sshd of {name} listens on {ip}:22"), Duration::from_secs(30), || {
            sh(&format!("ip netns exec {netns} ss -ltnH 'sport = :22' | grep -qE '({ip}|0.0.0.0|\\*):22'"))
                .status
                .success()
        });
    }

    /// Runs `cmd` as root on host `index` over SSH (the test's key).
    pub fn root_ssh(&self, index: usize, cmd: &str) -> String {
        let host = &self.hosts[index];
        let out = self.root_ssh_status(index, cmd);
        assert!(
            out.status.success(),
            "`{cmd}` on {} failed: {}{}",
            host.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `cmd` as root on host `index`, whatever its outcome.
    pub fn root_ssh_status(&self, index: usize, cmd: &str) -> std::process::Output {
        Command::new("ssh")
            .args(["-F", &self.path("ssh_config").display().to_string(), "-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=accept-new", "-o", "ConnectTimeout=10", "-l", "root", "--"])
            .args([&self.hosts[index].ip, cmd])
            .stdin(Stdio::null())
            .output()
            .expect("ssh runs")
    }

    /// PIDs (in the root namespace) of every process of host `index`.
    pub fn pids(&self, index: usize) -> Vec<u32> {
        let out = sh(&format!("ip netns pids {}", self.hosts[index].netns));
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// `(pid, command line)` of every live `rill` process on host `index`
    /// (zombies excluded: they are gone, only not reaped yet).
    pub fn rill_processes(&self, index: usize) -> Vec<(u32, String)> {
        self.pids(index)
            .into_iter()
            .filter_map(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let state = stat.rsplit_once(") ")?.1.chars().next()?;
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                let exe = cmdline.split(' ').next().unwrap_or("");
                (state != 'Z' && (exe.ends_with("/rill") || exe == "rill" || exe.ends_with("rill-test-node")))
                    .then(|| (pid, cmdline.trim().to_owned()))
            })
            .collect()
    }

    /// The host's PID 1 (its init script, or systemd), seen from here: the
    /// process of its network namespace that is PID 1 in its own PID namespace.
    fn root_pid(&self, index: usize) -> Option<u32> {
        self.pids(index).into_iter().find(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            status.lines().find_map(|l| l.strip_prefix("NSpid:")).is_some_and(|ids| {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                ids.len() > 1 && ids.last() == Some(&"1")
            })
        })
    }

    /// A file on host `index`, read through its root.
    pub fn read_file(&self, index: usize, path: &str) -> Option<String> {
        std::fs::read_to_string(format!("/proc/{}/root{path}", self.root_pid(index)?)).ok()
    }

    /// Cuts host `index` off the network: every packet on its `eth0` is
    /// dropped (an nft table in its namespace), connections stall.
    pub fn cut(&self, index: usize) {
        let ns = &self.hosts[index].netns;
        must(&format!(
            "ip netns exec {ns} nft -f - <<'EOF'\ntable inet rill_cut {{\n  chain input {{ type filter hook input priority 0; policy accept; iifname \"eth0\" drop; }}\n  chain output {{ type filter hook output priority 0; policy accept; oifname \"eth0\" drop; }}\n}}\nEOF"
        ));
    }

    /// Undoes [`Net::cut`].
    pub fn restore(&self, index: usize) {
        must(&format!("ip netns exec {} nft delete table inet rill_cut", self.hosts[index].netns));
    }

    /// Kills process `pid` of host `index` with SIGKILL (a crash).
    pub fn kill(&self, index: usize, pid: u32) {
        assert!(self.pids(index).contains(&pid), "{pid} is not a process of {}", self.hosts[index].name);
        must(&format!("kill -9 {pid}"));
    }

    /// Stops host `index` at once (every process of it), as a power cut.
    pub fn power_off(&mut self, index: usize) {
        let host = &mut self.hosts[index];
        let _ = sh(&format!("ip link set {} down", host.veth));
        for pid in String::from_utf8_lossy(&sh(&format!("ip netns pids {}", host.netns)).stdout).lines() {
            let _ = sh(&format!("kill -9 {}", pid.trim()));
        }
        if let Some(mut child) = host.init.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let ns = host.netns.clone();
        poll_until(&format!("every process of {} is gone", host.name), Duration::from_secs(10), || {
            String::from_utf8_lossy(&sh(&format!("ip netns pids {ns}")).stdout).trim().is_empty()
        });
        let _ = sh(&format!("ip link del {} 2>/dev/null; ip netns del {} 2>/dev/null", host.veth, host.netns));
        if host.systemd {
            systemd_cleanup(host);
        }
    }

    /// A graceful reboot of a systemd host: `systemctl reboot` inside it
    /// (services get SIGTERM and stop in order), then, once the container
    /// has shut down (nspawn exits, as a machine's power-cycle would), it
    /// boots again from the same disk.
    pub fn reboot(&mut self, index: usize) {
        assert!(self.hosts[index].systemd, "only a systemd host reboots");
        let _ = self.root_ssh_status(index, "systemctl reboot");
        let name = self.hosts[index].name.clone();
        let init = self.hosts[index].init.as_mut().expect("the host is running");
        poll_until(&format!("{name} shut down for its reboot"), Duration::from_secs(60), || {
            matches!(init.try_wait(), Ok(Some(_)))
        });
        self.power_off(index);
        self.power_on(index);
    }

    /// Boots a host that was powered off again (same files; a systemd host
    /// keeps its disk, a plain one gets a fresh root).
    pub fn power_on(&mut self, index: usize) {
        self.start(index);
    }

    /// A `cluster.yml` for hosts `machines`: (host index, machine id, user, labels).
    pub fn cluster_yml(&self, machines: &[(usize, &str, &str, &str)]) -> PathBuf {
        let mut text = format!("coordinator:\n  addr: {}\n  port: 6013\nmachines:\n", self.gateway);
        for (index, id, user, labels) in machines {
            text += &format!("  - id: {id}\n    host: {}\n    user: {user}\n", self.hosts[*index].ip);
            if !labels.is_empty() {
                text += "    labels:\n";
                for pair in labels.split(',') {
                    let (k, v) = pair.split_once('=').expect("k=v");
                    text += &format!("      {k}: \"{v}\"\n");
                }
            }
        }
        self.write("cluster.yml", &text)
    }

    /// Everything worth reading when a test failed.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(self.path("home/state/rill")).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                text += &format!(
                    "=== {}\n{}\n",
                    entry.path().display(),
                    std::fs::read_to_string(entry.path()).unwrap_or_default()
                );
            }
        }
        for (index, host) in self.hosts.iter().enumerate() {
            let init_log = std::fs::read_to_string(&host.log).unwrap_or_default();
            // A booting systemd's console is long: its end is what matters.
            let tail: Vec<&str> = init_log.lines().rev().take(40).collect();
            text += &format!(
                "=== {} init log (end)\n{}\n",
                host.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            if host.systemd
                && let Some(root) = self.root_pid(index)
            {
                let journal = sh(&format!(
                    "journalctl --no-pager -q --directory=/proc/{root}/root/run/log/journal -u 'rill-daemon-*' | tail -n 60"
                ));
                text += &format!(
                    "=== {} journal of rill-daemon-*\n{}\n",
                    host.name,
                    String::from_utf8_lossy(&journal.stdout)
                );
            }
            for home in ["/root", "/home/robot"] {
                let Some(root) = self.root_pid(index) else { continue };
                let listing = sh(&format!("ls -d /proc/{root}/root{home}/.local/state/rill/cluster-* 2>/dev/null"));
                for dir in String::from_utf8_lossy(&listing.stdout).lines() {
                    let log = std::fs::read_to_string(format!("{dir}/daemon.log")).unwrap_or_default();
                    text += &format!("=== {} {dir}/daemon.log\n{log}\n", host.name);
                }
            }
        }
        text
    }

    /// The coordinator `cluster up` started, from its record.
    pub fn coordinator_pid(&self) -> Option<u32> {
        let record = std::fs::read_to_string(self.path("home/state/rill/cluster-6013.json")).ok()?;
        let value: serde_json::Value = serde_json::from_str(&record).ok()?;
        value["coordinator_pid"].as_u64().map(|p| p as u32)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- logs of the cluster test ----\n{}", self.logs());
        }
        if let Some(pid) = self.coordinator_pid() {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            if exe.to_string_lossy().trim_end_matches(" (deleted)") == env!("CARGO_BIN_EXE_rill") {
                let _ = sh(&format!("kill -9 {pid}"));
            }
        }
        for index in 0..self.hosts.len() {
            self.power_off(index);
        }
        let _ = sh(&format!("ip link del {}", self.bridge));
    }
}

/// The Debian rootfs systemd hosts boot (debootstrap, once per target
/// directory: about a minute, then cached).
fn rootfs() -> PathBuf {
    static ROOTFS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ROOTFS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rootfs-bookworm");
    if dir.join("etc/debian_version").exists() {
        return dir;
    }
    let building = dir.with_extension("building");
    let _ = std::fs::remove_dir_all(&building);
    let started = Instant::now();
    must(&format!(
        "debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,openssh-server,iproute2,sudo,procps \
         bookworm {} http://deb.debian.org/debian > {}.log 2>&1 || {{ tail -20 {}.log; exit 1; }}",
        building.display(),
        building.display(),
        building.display()
    ));
    std::fs::rename(&building, &dir).expect("rootfs in place");
    eprintln!("built the systemd hosts' rootfs in {:.0}s", started.elapsed().as_secs_f64());
    dir
}

/// Where a systemd host's disk lives (kept across power cycles).
fn disk(host: &Host) -> (PathBuf, PathBuf, PathBuf) {
    (host.mnt.join("upper"), host.mnt.join("work"), host.mnt.join("root"))
}

/// Mounts the host's disk (an overlay over the rootfs), puts its files on
/// it, and returns the command that boots it: systemd-nspawn in the host's
/// network namespace, from a cgroup of its own (else all containers would
/// share the test's), with the build directory mounted read-only at its
/// own path (node binaries, the rill under test).
fn systemd_boot(host: &Host) -> Command {
    let lower = rootfs();
    let (upper, work, root) = disk(host);
    for dir in [&upper, &work, &root] {
        std::fs::create_dir_all(dir).expect("host disk");
    }
    let _ = sh(&format!("umount -l {} 2>/dev/null", root.display()));
    must(&format!(
        "mount -t overlay overlay -o lowerdir={},upperdir={},workdir={} {}",
        lower.display(),
        upper.display(),
        work.display(),
        root.display()
    ));
    must(&format!(
        "rm -f {r}/etc/ssh/ssh_host_*_key* && cp -a {f}/. {r}/ && ln -sf /lib/systemd/system/ssh.service {r}/etc/systemd/system/multi-user.target.wants/ssh.service",
        r = root.display(),
        f = host.files.display()
    ));
    let machine = host.netns.clone();
    let bin = Path::new(env!("CARGO_BIN_EXE_rill")).parent().expect("bin dir").to_path_buf();
    let cgroup_dirs = ["systemd", "unified"].map(|c| format!("/sys/fs/cgroup/{c}/rill-harness/{machine}"));
    for dir in &cgroup_dirs {
        let _ = std::fs::create_dir_all(dir);
    }
    let script = format!(
        "for d in {dirs}; do echo $$ > $d/cgroup.procs 2>/dev/null || true; done; \
         exec systemd-nspawn -q -b --keep-unit --register=no --network-namespace-path=/run/netns/{ns} -M {machine} \
         -D {root} --bind-ro={bin}",
        dirs = cgroup_dirs.join(" "),
        ns = host.netns,
        root = root.display(),
        bin = bin.display(),
    );
    let mut command = Command::new("sh");
    command.args(["-c", &script]);
    command
}

/// After a systemd host stopped: its disk unmounted (kept), its cgroups and
/// nspawn's propagation directory removed.
fn systemd_cleanup(host: &Host) {
    let (_, _, root) = disk(host);
    let _ = sh(&format!("umount -l {} 2>/dev/null", root.display()));
    for controller in ["systemd", "unified"] {
        let _ = sh(&format!(
            "find /sys/fs/cgroup/{controller}/rill-harness/{} -depth -type d -exec rmdir {{}} \\; 2>/dev/null",
            host.netns
        ));
    }
    let _ = std::fs::remove_dir_all(format!("/run/systemd/nspawn/propagate/{}", host.netns));
}
