//! What a node process uses, read from /proc: CPU (as a share of one core
//! since the last sample) and resident memory. Sampled once a second by the
//! runtime for `rill top`.

use std::time::{Duration, Instant};

/// How often the runtime samples its nodes.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// One process's CPU time (user + system, in clock ticks) and RSS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    pub cpu_ticks: u64,
    pub rss_bytes: u64,
}

/// Reads `pid`'s sample; `None` once it is gone.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let cpu_ticks = cpu_ticks(&stat)?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(ProcSample { cpu_ticks, rss_bytes: pages.saturating_mul(page_size()) })
}

/// utime + stime from a /proc/PID/stat line. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted from its last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are
    // at 11 and 12 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|hz| *hz > 0).unwrap_or(100)
}

/// CPU use between two samples of one process, in percent of one core.
pub fn cpu_percent(before: (Instant, ProcSample), after: (Instant, ProcSample)) -> f64 {
    let seconds = after.0.saturating_duration_since(before.0).as_secs_f64();
    if seconds <= 0.0 {
        return 0.0;
    }
    let ticks = after.1.cpu_ticks.saturating_sub(before.1.cpu_ticks) as f64;
    (ticks / ticks_per_second() as f64 / seconds * 1000.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_a_name_with_spaces_and_parentheses() {
        let me = sample(std::process::id()).expect("this process");
        assert!(me.rss_bytes > 1 << 20, "{me:?}");
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 1 1 1";
        assert_eq!(cpu_ticks(stat), Some(300));
        assert_eq!(cpu_ticks("garbage"), None);
        assert_eq!(sample(u32::MAX), None, "no such process");
        let t0 = Instant::now();
        let hz = ticks_per_second();
        let busy = cpu_percent(
            (t0, ProcSample { cpu_ticks: 0, rss_bytes: 0 }),
            (t0 + Duration::from_secs(2), ProcSample { cpu_ticks: hz, rss_bytes: 0 }),
        );
        assert_eq!(busy, 50.0, "one second of CPU in two");
    }
}
