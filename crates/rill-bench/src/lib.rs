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
