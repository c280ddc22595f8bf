//! `rill doctor`: what this machine needs to run rill nodes, each checked
//! for real (a shared region is created, sealed, passed over a socket and
//! mapped as a receiver maps it), with what to do when a check fails.

use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;

use rill_proto::shm::Region;
use rill_proto::transport;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    /// Works, but something will bite later.
    Warn,
    /// rill cannot work here until it is fixed.
    Fail,
    /// Not checked (nothing to check against).
    Skip,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "fail",
            Level::Skip => "skip",
        }
    }
}

/// One check: its name, outcome, what was found, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self { name, level: Level::Ok, detail: detail.into(), fix: None }
    }

    pub fn bad(name: &'static str, level: Level, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { name, level, detail: detail.into(), fix: Some(fix.into()) }
    }
}

/// Open files a daemon with a few dozen nodes needs: each node holds its
/// control socket, its edges (two ends each) and shared regions' fds.
const WANT_OPEN_FILES: u64 = 8192;

/// This machine's checks, in order.
pub fn machine_checks() -> Vec<Check> {
    vec![kernel(), shared_memory(), fd_passing(), open_files(), parent_death_signal(), python(), ssh()]
}

fn kernel() -> Check {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    if !cfg!(target_os = "linux") || release.is_empty() {
        return Check::bad("kernel", Level::Fail, "not Linux", "rill's data plane needs Linux (memfd, SCM_RIGHTS)");
    }
    let arch = std::env::consts::ARCH;
    Check::ok("kernel", format!("Linux {release} ({arch})"))
}

/// A sealed memfd region, written, then mapped read-only through a second
/// descriptor with the receiver's checks: the path of every payload of
/// 4 KiB or more.
fn shared_memory() -> Check {
    const LEN: usize = 1 << 20;
    let fix = "the data plane needs memfd_create with sealing (Linux 3.17 or later) and mmap; \
               check seccomp or container policies that forbid them";
    let result = (|| -> std::io::Result<()> {
        let region = Region::create(LEN)?;
        // SAFETY: the region was just created here and is not shared yet.
        unsafe { region.bytes_mut(LEN) }.fill(0x5a);
        let fd = region.fd().ok_or_else(|| std::io::Error::other("the region has no descriptor"))?;
        let receiver = Region::open(fd.try_clone_to_owned()?, LEN).map_err(std::io::Error::other)?;
        match receiver.bytes(LEN).iter().all(|b| *b == 0x5a) {
            true => Ok(()),
            false => Err(std::io::Error::other("the receiver's mapping shows other bytes")),
        }
    })();
    match result {
        Ok(()) => Check::ok("shared memory", "a sealed 1 MiB memfd region, mapped by a receiver"),
        Err(e) => Check::bad("shared memory", Level::Fail, e.to_string(), fix),
    }
}

/// A descriptor sent over a SOCK_SEQPACKET pair: how edges and regions
/// reach nodes.
fn fd_passing() -> Check {
    let result = (|| -> std::io::Result<usize> {
        let (a, b) = transport::socket_pair()?;
        let (passed, _keep) = transport::socket_pair()?;
        transport::send_packet(a.as_fd(), b"doctor", &[passed.as_fd()], true)?;
        let mut buf = [0u8; 16];
        let (n, fds) = transport::recv_packet(b.as_fd(), &mut buf, true)?;
        match (&buf[..n], fds.len()) {
            (b"doctor", 1) => Ok(1),
            _ => Err(std::io::Error::other(format!("got {n} bytes and {} descriptors back", fds.len()))),
        }
    })();
    match result {
        Ok(_) => Check::ok("socket fd passing", "SOCK_SEQPACKET socket pair with SCM_RIGHTS"),
        Err(e) => Check::bad(
            "socket fd passing",
            Level::Fail,
            e.to_string(),
            "nodes get their edges as descriptors over Unix sockets: allow socketpair(AF_UNIX, SOCK_SEQPACKET) and SCM_RIGHTS",
        ),
    }
}

fn open_files() -> Check {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    let detail = format!("{soft} open files allowed (soft limit)");
    let fix = format!(
        "raise it: `ulimit -n {WANT_OPEN_FILES}` in the shell that starts rill, LimitNOFILE={WANT_OPEN_FILES} in a systemd unit"
    );
    match soft {
        s if s < 1024 => Check::bad("open files", Level::Fail, detail, fix),
        s if s < WANT_OPEN_FILES => Check::bad("open files", Level::Warn, detail, fix),
        _ => Check::ok("open files", detail),
    }
}

/// Nodes die with their daemon (PR_SET_PDEATHSIG), so none outlives it.
fn parent_death_signal() -> Check {
    let mut signal: libc::c_int = 0;
    // SAFETY: PR_GET_PDEATHSIG writes one int to the pointer given.
    let rc = unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &mut signal as *mut libc::c_int) };
    match rc {
        0 => Check::ok("parent-death signal", "prctl(PR_SET_PDEATHSIG) available: nodes end with their daemon"),
        _ => Check::bad(
            "parent-death signal",
            Level::Fail,
            std::io::Error::last_os_error().to_string(),
            "allow prctl(PR_SET_PDEATHSIG): without it nodes could outlive a killed daemon",
        ),
    }
}

/// Python nodes (`path: x.py`) need an interpreter with the `rill` package.
fn python() -> Check {
    let python = std::env::var("RILL_PYTHON").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".into());
    let probe = "import sys; v = sys.version_info; print(f'{v[0]}.{v[1]}.{v[2]}')\n\
                 try:\n    import rill; print(rill.__version__)\nexcept ImportError:\n    print('-')";
    let out = match Command::new(&python).args(["-c", probe]).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        _ => {
            let detail = format!("no `{python}`");
            return Check { name: "python nodes", level: Level::Skip, detail, fix: Some(PYTHON_FIX.into()) };
        }
    };
    let mut lines = out.lines();
    let (version, rill) = (lines.next().unwrap_or("?"), lines.next().unwrap_or("-"));
    match rill {
        "-" => Check::bad(
            "python nodes",
            Level::Warn,
            format!("{python} is Python {version}, without the rill package"),
            PYTHON_FIX,
        ),
        rill => Check::ok("python nodes", format!("{python} is Python {version} with rill {rill}")),
    }
}

const PYTHON_FIX: &str =
    "only for .py nodes: `pip install ./apis/python` from the rill source, and RILL_PYTHON=that interpreter";

/// `rill cluster` reaches machines with the system's OpenSSH client.
fn ssh() -> Check {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|dir| Path::new(&dir).join("ssh").is_file()))
        .unwrap_or(false);
    match found {
        true => Check::ok("ssh client", "ssh found (for `rill cluster`)"),
        false => Check::bad(
            "ssh client",
            Level::Warn,
            "no ssh on PATH",
            "only for `rill cluster`: install OpenSSH's client (Debian: apt install openssh-client)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_plane_checks_pass_here_and_every_check_is_named_once() {
        let checks = machine_checks();
        for name in ["kernel", "shared memory", "socket fd passing", "parent-death signal"] {
            let check = checks.iter().find(|c| c.name == name).expect(name);
            assert_eq!(check.level, Level::Ok, "{check:?}");
        }
        let names: std::collections::BTreeSet<&str> = checks.iter().map(|c| c.name).collect();
        assert_eq!(names.len(), checks.len(), "each check once");
        assert!(checks.iter().all(|c| c.level == Level::Ok || c.fix.is_some()), "a problem says what to do");
    }
}
