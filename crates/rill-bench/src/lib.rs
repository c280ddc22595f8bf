//! Shared helpers of the benchmark binary and its two nodes.

/// Header bit asking the pong node to reply.
pub const REPLY_BIT: u64 = 1 << 63;

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process here.
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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
