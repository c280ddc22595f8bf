//! Taps (`rill topic echo`, `topic hz`, `record`): what the daemon that
//! hosts a producer copies out of its messages, and how it travels. A
//! batch of samples is one binary WebSocket frame, daemon -> coordinator ->
//! CLI; the coordinator reads only the header (to route it and to add what
//! it dropped), the CLI decodes and checks the rest.
//!
//! Frame: `version u8, tap u64, dropped u64, count u64`, then per sample
//! `output u64` (index into the tap's outputs), `timestamp_ns u64` (the
//! producer's send time), `received_ns u64` (when the tap read it, same
//! clock), `size u64` (the whole payload), `skipped u64` (messages the
//! producer did not send the tap before this one), `data` (u64 length + the
//! first bytes of the payload, at most the tap's preview).

use crate::codec::{DecodeError, Reader, Writer};

/// The frame layout this build speaks.
pub const TAP_FRAME_VERSION: u8 = 1;
/// Bytes before the first sample.
pub const TAP_HEADER: usize = 1 + 8 + 8 + 8;
/// The largest frame a daemon sends (WebSocket frames are limited to
/// 16 MiB by default on both ends; this leaves room).
pub const MAX_TAP_FRAME: usize = 8 << 20;
/// The most payload bytes one sample carries: a longer payload is cut
/// (its `size` says how long it was).
pub const MAX_TAP_PREVIEW: u64 = (MAX_TAP_FRAME - 64 * 1024) as u64;
/// How far apart (µs) a producer sends a tap of `rill topic echo` and
/// `topic hz` messages of one output: at most 1,000 a second, so that a
/// tap on a fast output costs its producer and consumers next to nothing.
/// `rill record` takes every message (0).
pub const TAP_EVERY_US: u64 = 1000;

/// Open taps per dataflow: each one costs its producers a delivery per
/// message.
pub const MAX_TAPS: usize = 16;
/// The most samples a frame may hold.
pub const MAX_TAP_SAMPLES: u64 = 1 << 16;

/// The name of a tap's edge at its producer: never a node id (node ids
/// have no `:`), so it cannot replace a consumer's edge.
pub fn tap_peer(tap: u64) -> String {
    format!("rill:tap:{tap}")
}

/// The input name a producer gives a message on a tap edge: the output's
/// name, and after a NUL (never in an id) how many messages of it the
/// producer skipped before this one, if any.
pub fn tap_input(output: &str, skipped: u64) -> String {
    match skipped {
        0 => output.to_owned(),
        n => format!("{output}\0{n}"),
    }
}

/// The output and skipped count of a tap edge's input name.
pub fn parse_tap_input(input: &str) -> (&str, u64) {
    match input.split_once('\0') {
        Some((output, n)) => (output, n.parse().unwrap_or(0)),
        None => (input, 0),
    }
}

/// One message seen by a tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapSample {
    /// Index into the tap's outputs.
    pub output: u64,
    pub timestamp_ns: u64,
    pub received_ns: u64,
    /// The payload's whole length.
    pub size: u64,
    /// Messages of this output the producer skipped before this one (the
    /// tap samples at most [`TAP_EVERY_US`] apart).
    pub skipped: u64,
    /// Its first bytes (at most the tap's preview).
    pub data: Vec<u8>,
}

impl TapSample {
    /// Bytes it takes in a frame.
    pub fn encoded_len(&self) -> usize {
        6 * 8 + self.data.len()
    }
}

/// A batch of samples of one tap.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TapFrame {
    pub tap: u64,
    /// Samples dropped since the previous frame (the tap's queue was full,
    /// or a frame could not be passed on).
    pub dropped: u64,
    pub samples: Vec<TapSample>,
}

impl TapFrame {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(TAP_HEADER + self.samples.iter().map(TapSample::encoded_len).sum::<usize>());
        let mut w = Writer::new(&mut out);
        w.u8(TAP_FRAME_VERSION);
        w.u64(self.tap);
        w.u64(self.dropped);
        w.u64(self.samples.len() as u64);
        for s in &self.samples {
            w.u64(s.output);
            w.u64(s.timestamp_ns);
            w.u64(s.received_ns);
            w.u64(s.size);
            w.u64(s.skipped);
            w.bytes(&s.data);
        }
        out
    }

    /// Decodes and checks a frame: no more samples than announced or
    /// allowed, no sample with more data than its size.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let (tap, dropped, count) = header(buf)?;
        if count > MAX_TAP_SAMPLES {
            return Err(DecodeError::TooMany(count));
        }
        let mut r = Reader::new(&buf[TAP_HEADER..]);
        let mut samples = Vec::with_capacity(count.min(1024) as usize);
        for _ in 0..count {
            let (output, timestamp_ns, received_ns, size, skipped) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?);
            let data = r.bytes()?;
            if data.len() as u64 > size {
                return Err(DecodeError::LengthMismatch { declared: size, actual: data.len() as u64 });
            }
            samples.push(TapSample { output, timestamp_ns, received_ns, size, skipped, data: data.to_vec() });
        }
        r.finish()?;
        Ok(Self { tap, dropped, samples })
    }
}

/// A frame's `(tap, dropped, count)`, read without the samples.
pub fn header(buf: &[u8]) -> Result<(u64, u64, u64), DecodeError> {
    let mut r = Reader::new(buf);
    match r.u8()? {
        TAP_FRAME_VERSION => Ok((r.u64()?, r.u64()?, r.u64()?)),
        other => Err(DecodeError::UnknownTag(other)),
    }
}

/// Adds `n` to a frame's `dropped` (the coordinator's own drops ride on the
/// next frame it passes on).
pub fn add_dropped(buf: &mut [u8], n: u64) {
    if let Ok((_, dropped, _)) = header(buf) {
        buf[9..17].copy_from_slice(&dropped.saturating_add(n).to_le_bytes());
    }
}

/// A payload's first bytes as a person reads them: quoted text if they
/// are UTF-8 without control characters (a character cut at the end of
/// the preview is left out), else hex. `…` marks a payload longer than
/// the preview.
pub fn preview_text(data: &[u8], size: u64) -> String {
    let more = if (data.len() as u64) < size { "…" } else { "" };
    let text = match std::str::from_utf8(data) {
        Ok(text) => Some(text),
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&data[..e.valid_up_to()]).ok(),
        Err(_) => None,
    };
    match text.filter(|t| !t.chars().any(|c| c.is_control() && c != '\n' && c != '\t')) {
        Some(text) => format!("{text:?}{more}"),
        None => format!("{}{more}", hex(data)),
    }
}

/// Bytes as space-separated hex pairs.
pub fn hex(data: &[u8]) -> String {
    let pairs: Vec<String> = data.iter().map(|b| format!("{b:02x}")).collect();
    pairs.join(" ")
}

/// The rate of a topic over its last intervals, as `ros2 topic hz` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rate {
    pub rate_hz: f64,
    pub min_s: f64,
    pub max_s: f64,
    pub std_dev_s: f64,
    /// Intervals it is computed over.
    pub window: usize,
}

/// The most intervals a [`RateWindow`] keeps (16 bytes each).
pub const MAX_RATE_WINDOW: usize = 1 << 20;

/// The times messages arrived, the last `window` intervals of them. A
/// sampled message (`skipped` before it) closes an interval that held
/// `skipped + 1` messages: the rate counts them all, and min/max/std-dev
/// see that interval's average.
#[derive(Debug)]
pub struct RateWindow {
    window: usize,
    last: Option<u64>,
    /// (ns, messages in it)
    intervals: std::collections::VecDeque<(u64, u64)>,
}

impl RateWindow {
    /// Keeps the last `window` intervals (at least 1, at most
    /// [`MAX_RATE_WINDOW`]).
    pub fn new(window: usize) -> Self {
        Self { window: window.clamp(1, MAX_RATE_WINDOW), last: None, intervals: std::collections::VecDeque::new() }
    }

    /// A message arrived at `at_ns`, `skipped` messages after the last
    /// one seen; a time before the last one is ignored.
    pub fn push(&mut self, at_ns: u64, skipped: u64) {
        if let Some(last) = self.last {
            if at_ns < last {
                return;
            }
            if self.intervals.len() == self.window {
                self.intervals.pop_front();
            }
            self.intervals.push_back((at_ns - last, skipped.saturating_add(1)));
        }
        self.last = Some(at_ns);
    }

    /// `None` until two messages arrived.
    pub fn rate(&self) -> Option<Rate> {
        let n = self.intervals.len();
        if n == 0 {
            return None;
        }
        let each = |(ns, messages): &(u64, u64)| *ns as f64 / 1e9 / *messages as f64;
        let span: f64 = self.intervals.iter().map(|(ns, _)| *ns as f64 / 1e9).sum();
        let messages: u64 = self.intervals.iter().map(|(_, m)| *m).sum();
        let mean = self.intervals.iter().map(each).sum::<f64>() / n as f64;
        let variance = self.intervals.iter().map(|i| (each(i) - mean).powi(2)).sum::<f64>() / n as f64;
        Some(Rate {
            rate_hz: if span > 0.0 { messages as f64 / span } else { f64::INFINITY },
            min_s: self.intervals.iter().map(each).fold(f64::INFINITY, f64::min),
            max_s: self.intervals.iter().map(each).fold(0.0, f64::max),
            std_dev_s: variance.sqrt(),
            window: n,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_read_as_text_when_they_are_text_and_as_hex_otherwise() {
        assert_eq!(preview_text(b"tick 7", 6), "\"tick 7\"");
        assert_eq!(preview_text(b"tick 7", 100), "\"tick 7\"…");
        // A two-byte character cut in half by the preview.
        assert_eq!(preview_text("é".as_bytes().get(..1).unwrap_or_default(), 2), "\"\"…");
        assert_eq!(preview_text(&[0, 1, 0xff], 3), "00 01 ff");
        assert_eq!(preview_text(b"a\x07b", 3), "61 07 62");
    }

    #[test]
    fn a_rate_window_gives_rate_min_max_and_std_dev_over_its_last_intervals() {
        let mut w = RateWindow::new(3);
        assert_eq!(w.rate(), None);
        w.push(0, 0);
        assert_eq!(w.rate(), None);
        for t in [10_000_000, 20_000_000, 40_000_000, 50_000_000] {
            w.push(t, 0);
        }
        w.push(45_000_000, 0); // out of order: ignored
        // The last 3 intervals: 10, 20, 10 ms.
        let rate = w.rate().expect("a rate");
        assert_eq!(rate.window, 3);
        assert!((rate.rate_hz - 75.0).abs() < 1e-6, "{rate:?}");
        assert!((rate.min_s - 0.010).abs() < 1e-12 && (rate.max_s - 0.020).abs() < 1e-12, "{rate:?}");
        assert!((rate.std_dev_s - 0.004_714_045).abs() < 1e-6, "{rate:?}");

        // Sampled: 9 skipped in 10 ms is 1 kHz.
        let mut w = RateWindow::new(10);
        w.push(0, 0);
        w.push(10_000_000, 9);
        w.push(20_000_000, 9);
        let rate = w.rate().expect("a rate");
        assert!((rate.rate_hz - 1000.0).abs() < 1e-6 && (rate.max_s - 0.001).abs() < 1e-12, "{rate:?}");
    }

    #[test]
    fn a_frame_round_trips_and_a_bad_one_is_refused() {
        let frame = TapFrame {
            tap: 7,
            dropped: 3,
            samples: vec![
                TapSample { output: 0, timestamp_ns: 1, received_ns: 2, size: 5, skipped: 0, data: b"hello".to_vec() },
                TapSample { output: 1, timestamp_ns: 3, received_ns: 4, size: 1 << 20, skipped: 9, data: vec![1; 16] },
            ],
        };
        let mut bytes = frame.encode();
        assert_eq!(TapFrame::decode(&bytes), Ok(frame.clone()));
        assert_eq!(header(&bytes), Ok((7, 3, 2)));
        add_dropped(&mut bytes, 10);
        assert_eq!(TapFrame::decode(&bytes).map(|f| f.dropped), Ok(13));

        // Cut short, a trailing byte, a sample longer than its size, more
        // samples than announced, another version: refused.
        assert!(TapFrame::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(TapFrame::decode(&long), Err(DecodeError::TrailingBytes));
        let mut liar = frame.clone();
        liar.samples[0].size = 2;
        assert!(matches!(TapFrame::decode(&liar.encode()), Err(DecodeError::LengthMismatch { .. })));
        let mut many = bytes.clone();
        many[17..25].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(TapFrame::decode(&many), Err(DecodeError::TooMany(u64::MAX)));
        let mut other = bytes;
        other[0] = 9;
        assert_eq!(TapFrame::decode(&other), Err(DecodeError::UnknownTag(9)));
    }
}
