//! Shared helpers of the benchmark binary and its two nodes.

/// Header bit asking the pong node to reply.
pub const REPLY_BIT: u64 = 1 << 63;

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process here.
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Round trips for a payload of `size` bytes: a fifth of `hot` from 1 MiB
/// on (each takes much longer), at least 20.
pub fn iterations(size: usize, hot: usize) -> usize {
    if size >= 1 << 20 { hot / 5 } else { hot }.max(20)
}

/// One row of the human-readable table: the columns every mode shares.
pub fn common_cells(size: usize, result: &serde_json::Value) -> String {
    let f = |k: &str| result[k].as_f64().unwrap_or(f64::NAN);
    format!(
        "{:>9} {:>9.1} {:>9.1} {:>12.1} {:>12.1} {:>11.0}",
        size,
        f("p50_us"),
        f("p99_us"),
        f("paced_p50_us"),
        f("paced_p99_us"),
        f("msgs_per_s")
    )
}

/// Sends back every `size`-byte message until the peer closes.
pub fn echo(mut stream: impl std::io::Read + std::io::Write, size: usize) {
    let mut buf = vec![0u8; size];
    while stream.read_exact(&mut buf).is_ok() {
        if stream.write_all(&buf).is_err() {
            return;
        }
    }
}

/// p50 of round trip / 2, in µs, over `iters` round trips of `size` bytes
/// each way (after a warm-up of a tenth as many).
pub fn ping_pong(mut stream: impl std::io::Read + std::io::Write, size: usize, iters: usize) -> std::io::Result<f64> {
    let payload = vec![1u8; size];
    let mut back = vec![0u8; size];
    let mut samples = Vec::with_capacity(iters);
    for i in 0..iters + iters / 10 {
        let start = std::time::Instant::now();
        stream.write_all(&payload)?;
        stream.read_exact(&mut back)?;
        if i >= iters / 10 {
            samples.push(start.elapsed().as_secs_f64() * 1e6 / 2.0);
        }
    }
    Ok(percentile(&mut samples, 50.0))
}

/// The `p`th percentile (0-100) of `samples` (sorted in place).
pub fn percentile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

/// What the burst producer sends and its consumer expects: `count`
/// messages back to back per size, `rounds` times over all sizes, with
/// `idle_ms` between bursts; then the producer reports its RSS before the
/// first burst and `rss_wait_s` after the last (0: no report).
/// Args: `SIZES ROUNDS COUNT IDLE_MS RSS_WAIT_S`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BurstPlan {
    pub sizes: Vec<usize>,
    pub rounds: usize,
    pub count: usize,
    pub idle_ms: u64,
    pub rss_wait_s: u64,
}

impl BurstPlan {
    /// The node arguments that carry this plan.
    pub fn to_args(&self) -> Vec<String> {
        let sizes = self.sizes.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        vec![
            sizes,
            self.rounds.to_string(),
            self.count.to_string(),
            self.idle_ms.to_string(),
            self.rss_wait_s.to_string(),
        ]
    }

    pub fn from_args(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut next = |what: &str| args.next().ok_or_else(|| format!("missing argument {what}"));
        let sizes = next("SIZES")?
            .split(',')
            .map(|s| s.parse().map_err(|_| format!("bad size {s:?}")))
            .collect::<Result<Vec<usize>, _>>()?;
        let number = |text: String, what: &str| text.parse().map_err(|_| format!("bad {what} {text:?}"));
        let rounds = number(next("ROUNDS")?, "ROUNDS")?;
        let count = number(next("COUNT")?, "COUNT")?;
        let idle_ms = number(next("IDLE_MS")?, "IDLE_MS")? as u64;
        let rss_wait_s = number(next("RSS_WAIT_S")?, "RSS_WAIT_S")? as u64;
        Ok(Self { sizes, rounds, count, idle_ms, rss_wait_s })
    }
}

/// Time to copy `size` bytes between two warm buffers on one thread, in
/// seconds: what a producer that writes each payload once pays at least, so
/// `1 / memcpy_seconds` is the msg/s ceiling of any data path that hands
/// over filled buffers. Of 40 samples, each timing copies of at least 4 MiB
/// in all (a clock read would dwarf one small copy), the 10th percentile:
/// near the best this machine does, so the ceiling errs high and the
/// fractions reported against it err low.
/// The destination sits half a page off the source: on AMD EPYC a copy
/// between buffers at the same offset within their pages runs at ~3 GB/s
/// instead of ~25-60 GB/s, and the ceiling is the fast case.
pub fn memcpy_seconds(size: usize) -> f64 {
    let size = size.max(1);
    let src = vec![7u8; size];
    let mut dst_buf = vec![0u8; size + 4096];
    let offset = (2048 + src.as_ptr() as usize).wrapping_sub(dst_buf.as_ptr() as usize) % 4096;
    let dst = &mut dst_buf[offset..offset + size];
    let per_sample = ((4 << 20) / size).clamp(1, 100_000);
    let mut samples = Vec::with_capacity(41);
    for _ in 0..41 {
        let start = std::time::Instant::now();
        for _ in 0..per_sample {
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut *dst);
        }
        samples.push(start.elapsed().as_secs_f64() / per_sample as f64);
    }
    // The first sample warms the buffers up.
    percentile(&mut samples[1..], 10.0)
}

/// This process's resident set in KiB (0 if unknown).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
            line.trim().trim_end_matches("kB").trim().parse().ok()
        })
        .unwrap_or(0)
}

/// The median of `values` (NaN if empty).
pub fn median(mut values: Vec<f64>) -> f64 {
    percentile(&mut values, 50.0)
}

/// The directory of this executable, where the benchmark's node binaries
/// are built next to it.
pub fn bin_dir() -> std::io::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent().map(std::path::Path::to_path_buf).ok_or_else(|| std::io::Error::other("executable has no directory"))
}

/// The benchmark's Python nodes (crates/rill-bench/py), in the source tree
/// this binary was built from.
pub fn py_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("py")
}

/// One node of a benchmark dataflow: a binary next to this one, or a
/// Python script of [`py_dir`] (`*.py`, run by `python`).
struct BenchNode<'a> {
    id: &'a str,
    binary: &'a str,
    python: Option<&'a str>,
    args: Vec<String>,
    /// `(input, source)`; every input keeps 1,000 messages.
    inputs: Vec<(&'a str, &'a str)>,
    outputs: &'a [&'a str],
    machine: &'a str,
}

/// The YAML of a benchmark dataflow; `cross` places each node on its
/// `machine` (`a` or `b`).
fn nodes_yaml(nodes: Vec<BenchNode<'_>>, cross: bool) -> std::io::Result<String> {
    let dir = bin_dir()?;
    let mut yaml = String::from("nodes:\n");
    for node in nodes {
        let binary = match node.python {
            Some(_) => py_dir().join(node.binary),
            None => dir.join(node.binary),
        };
        if node.python.is_some() && !binary.exists() {
            return Err(std::io::Error::other(format!("{} is missing", binary.display())));
        }
        if !binary.exists() {
            // `cargo run -p rill-bench` builds only this binary, not its nodes.
            let release = if cfg!(debug_assertions) { "" } else { " --release" };
            return Err(std::io::Error::other(format!(
                "{} is missing: build the benchmark's node binaries first: cargo build{release} -p rill-bench",
                binary.display()
            )));
        }
        let args: Vec<String> = node.args.iter().map(|a| format!("{a:?}")).collect();
        yaml += &format!(
            "  - id: {}\n    path: {:?}\n    args: [{}]\n    outputs: [{}]\n",
            node.id,
            binary.display().to_string(),
            args.join(", "),
            node.outputs.join(", ")
        );
        if let Some(python) = node.python {
            yaml += &format!("    env: {{ RILL_PYTHON: {python:?} }}\n");
        }
        if !node.inputs.is_empty() {
            yaml += "    inputs:\n";
            for (input, source) in node.inputs {
                yaml += &format!("      {input}: {{ source: {source}, queue_size: 1000 }}\n");
            }
        }
        if cross {
            yaml += &format!("    deploy: {{ machine: {} }}\n", node.machine);
        }
    }
    Ok(yaml)
}

/// Ping (hot, paced and burst round trips per size) and pong.
pub fn ping_pong_yaml(
    sizes: &[usize],
    hot: usize,
    paced: usize,
    bursts: usize,
    cross: bool,
) -> std::io::Result<String> {
    nodes_yaml(ping_and_pong(sizes, hot, paced, bursts, [None, None]), cross)
}

/// Which end of a ping-pong is Python: the ping (Python → Rust) or the
/// pong (Rust → Python).
#[derive(Clone, Copy, Debug)]
pub enum PythonEnd {
    Ping,
    Pong,
}

/// [`ping_pong_yaml`] on one machine with one end in Python (`python`,
/// which must have the `rill` package).
pub fn python_ping_pong_yaml(
    sizes: &[usize],
    hot: usize,
    paced: usize,
    bursts: usize,
    end: PythonEnd,
    python: &str,
) -> std::io::Result<String> {
    let ends = match end {
        PythonEnd::Ping => [Some(python), None],
        PythonEnd::Pong => [None, Some(python)],
    };
    nodes_yaml(ping_and_pong(sizes, hot, paced, bursts, ends), false)
}

/// The ping and pong nodes; `python[i]` makes that one the Python script.
fn ping_and_pong<'a>(
    sizes: &[usize],
    hot: usize,
    paced: usize,
    bursts: usize,
    python: [Option<&'a str>; 2],
) -> Vec<BenchNode<'a>> {
    let sizes = sizes.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    vec![
        BenchNode {
            id: "ping",
            binary: if python[0].is_some() { "ping.py" } else { "rill-bench-ping" },
            python: python[0],
            args: vec![sizes, hot.to_string(), paced.to_string(), bursts.to_string()],
            inputs: vec![("pong", "pong/pong")],
            outputs: &["ping"],
            machine: "a",
        },
        BenchNode {
            id: "pong",
            binary: if python[1].is_some() { "pong.py" } else { "rill-bench-pong" },
            python: python[1],
            args: vec![],
            inputs: vec![("ping", "ping/ping")],
            outputs: &["pong"],
            machine: "b",
        },
    ]
}

/// The burst producer, on machine `a`.
fn burst_node(plan: &BurstPlan) -> BenchNode<'static> {
    BenchNode {
        id: "burst",
        binary: "rill-bench-burst",
        python: None,
        args: plan.to_args(),
        inputs: vec![],
        outputs: &["out"],
        machine: "a",
    }
}

/// A consumer `id` draining the burst producer, on machine `b`.
fn drain_node(id: &str, args: Vec<String>) -> BenchNode<'_> {
    BenchNode {
        id,
        binary: "rill-bench-drain",
        python: None,
        args,
        inputs: vec![("in", "burst/out")],
        outputs: &[],
        machine: "b",
    }
}

/// The burst producer and its draining consumer (`touch`: it reads every byte).
pub fn burst_yaml(plan: &BurstPlan, touch: bool, cross: bool) -> std::io::Result<String> {
    let mut drain_args = plan.to_args();
    if touch {
        drain_args.push("touch".into());
    }
    nodes_yaml(vec![burst_node(plan), drain_node("drain", drain_args)], cross)
}

/// One burst producer on machine `a` and `consumers` draining consumers
/// (`drain0`, `drain1`, ...) of the same output on `b`.
pub fn fan_out_yaml(plan: &BurstPlan, consumers: usize) -> std::io::Result<String> {
    let ids: Vec<String> = (0..consumers).map(|i| format!("drain{i}")).collect();
    let mut nodes = vec![burst_node(plan)];
    nodes.extend(ids.iter().map(|id| drain_node(id, plan.to_args())));
    nodes_yaml(nodes, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_plan_round_trips_through_args() {
        let plan = BurstPlan { sizes: vec![0, 8, 4096000], rounds: 3, count: 100, idle_ms: 500, rss_wait_s: 10 };
        assert_eq!(BurstPlan::from_args(plan.to_args().into_iter()), Ok(plan));
        assert!(BurstPlan::from_args(["8,x".to_owned()].into_iter()).is_err());
        assert!(BurstPlan::from_args(["8".to_owned(), "3".to_owned()].into_iter()).is_err());
    }
}
