//! Control groups (v1 hierarchies) to make process faults that signals
//! cannot: a process that survives SIGKILL (a frozen one stays in D state
//! until thawed, like a process stuck in a hung driver or NFS) and a process
//! that cannot start another thread (`pids.max`, which root does not bypass
//! as it does RLIMIT_NPROC). Needs root and the v1 `freezer`/`pids`
//! hierarchies under /sys/fs/cgroup, which CI has.

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct Group {
    controller: &'static str,
    path: PathBuf,
}

impl Group {
    /// A new group in the v1 `controller` hierarchy, or `None` (with the
    /// reason printed) when this machine cannot make one.
    pub fn new(controller: &'static str) -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: a {controller} cgroup needs root");
            return None;
        }
        let root = PathBuf::from("/sys/fs/cgroup").join(controller);
        if !root.join("cgroup.procs").exists() {
            eprintln!("skipped: no cgroup v1 {controller} hierarchy at {}", root.display());
            return None;
        }
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = root.join(format!("rill-test-{}-{n}", std::process::id()));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Some(Self { controller, path })
    }

    /// Moves process `pid` (all its threads) into the group.
    pub fn add(&self, pid: u32) {
        self.write("cgroup.procs", &pid.to_string());
    }

    pub fn write(&self, file: &str, value: &str) {
        let path = self.path.join(file);
        std::fs::write(&path, value).unwrap_or_else(|e| panic!("write {value} to {}: {e}", path.display()));
    }

    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path.join(file)).unwrap_or_default().trim().to_owned()
    }

    /// Freezes the group's processes (freezer groups), waiting until they are.
    pub fn freeze(&self) {
        self.write("freezer.state", "FROZEN");
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.read("freezer.state") != "FROZEN" {
            assert!(Instant::now() < deadline, "the group did not freeze within 5 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Group {
    /// Thaws, hands what is left back to the root group, and removes the group.
    fn drop(&mut self) {
        if self.controller == "freezer" {
            let _ = std::fs::write(self.path.join("freezer.state"), "THAWED");
        }
        let root = self.path.parent().map(|p| p.join("cgroup.procs"));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let procs = std::fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
            if procs.trim().is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in procs.lines() {
                if let Some(root) = &root {
                    let _ = std::fs::write(root, pid);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}
