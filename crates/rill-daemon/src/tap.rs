//! Taps served by the daemon that hosts the producer (`rill topic echo`,
//! `topic hz`, `record`). The router wires a tap like one more consumer of
//! the producer (its edge is named [`tap_peer`]), so the producer's own
//! rules bound it: a drop-oldest backlog of [`TAP_QUEUE`] messages per
//! output, and a bounded number of shared regions lent to it (its queues'
//! sum plus a little); its real consumers never wait for it. It samples
//! what it sends the tap (`DaemonMsg::Tap`). This thread reads the tap's edges, copies
//! the first `preview` bytes of each message out at once and releases the
//! region (nothing stays pinned), and hands batches of samples
//! ([`TapFrame`]) to the coordinator connection every [`FLUSH_EVERY`]. A
//! batch that finds no room there is dropped and counted.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use rill_proto::shm::Region;
use rill_proto::tap::{MAX_TAP_FRAME, MAX_TAP_SAMPLES, TAP_HEADER, TapFrame, TapSample};
use rill_proto::{EdgeMsg, Payload, Route, transport};
use rustix::event::{PollFd, PollFlags, poll};
use rustix::io::Errno;

pub use rill_proto::tap::tap_peer;

/// Messages a tap's backlog at the producer keeps per output (drop-oldest).
pub const TAP_QUEUE: u32 = 64;
/// How often a tap sends what it read.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Packets read from one edge before looking at the others.
const READ_BATCH: usize = 256;

/// Takes an encoded frame; false if there was no room for it.
pub type FrameSink = Arc<dyn Fn(Vec<u8>) -> bool + Send + Sync>;

/// The edge routes of a tap on `outputs` of one node: each output feeds
/// an "input" of the same name.
pub fn routes(outputs: &[String]) -> Vec<Route> {
    outputs.iter().map(|o| Route { output: o.clone(), input: o.clone(), queue_size: TAP_QUEUE }).collect()
}

/// Where the router hands a tap reader the edges it wires (`(node, fd)`;
/// a new one for a node replaces its old one, as when it restarted).
#[derive(Clone, Debug)]
pub struct TapEnds {
    tx: Sender<(String, OwnedFd)>,
    wake: Arc<OwnedFd>,
}

impl TapEnds {
    /// False when the reader is gone.
    pub fn send(&self, node: &str, fd: OwnedFd) -> bool {
        let sent = self.tx.send((node.to_owned(), fd)).is_ok();
        let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
        sent
    }
}

/// A running tap reader; dropping it stops the thread.
pub struct TapReader {
    stop: Arc<AtomicBool>,
    wake: Arc<OwnedFd>,
}

impl TapReader {
    /// Starts reading the edges that arrive on the returned [`TapEnds`].
    /// `index` maps `(node, output)` to the output's index in the tap.
    pub fn start(
        tap: u64,
        index: HashMap<(String, String), u64>,
        preview: u64,
        sink: FrameSink,
    ) -> std::io::Result<(Self, TapEnds)> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let wake = Arc::new(rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?);
        let (tx, ends) = std::sync::mpsc::channel();
        let woken = wake.clone();
        let thread = std::thread::Builder::new().name(format!("tap-{tap}")).spawn(move || {
            let mut reader = Reader {
                frame: TapFrame { tap, ..TapFrame::default() },
                bytes: TAP_HEADER,
                index,
                preview: usize::try_from(preview).unwrap_or(usize::MAX),
                sink,
                buf: vec![0u8; rill_proto::MAX_PACKET],
            };
            reader.run(&flag, &ends, &woken);
        })?;
        drop(thread);
        Ok((Self { stop, wake: wake.clone() }, TapEnds { tx, wake }))
    }
}

impl Drop for TapReader {
    /// The thread ends within [`FLUSH_EVERY`] (not waited for: this may
    /// run on the connection's executor).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
    }
}

/// One producer's tap edge.
struct Edge {
    node: String,
    fd: OwnedFd,
    regions: HashMap<u64, Region>,
    /// Releases its socket had no room for (sent again at each wake-up,
    /// at most [`FLUSH_EVERY`] apart): the producer lends the tap only so
    /// many regions, so a lost release would starve it for good.
    pending: HashMap<u64, u32>,
}

impl Edge {
    fn release(&mut self, region: u64) {
        *self.pending.entry(region).or_default() += 1;
        self.send_pending();
    }

    fn send_pending(&mut self) {
        let mut buf = Vec::with_capacity(24);
        while let Some((&region, &count)) = self.pending.iter().next() {
            buf.clear();
            EdgeMsg::Release { region, count }.encode(&mut buf);
            match transport::send_packet(self.fd.as_fd(), &buf, &[], true) {
                Ok(()) => {
                    self.pending.remove(&region);
                }
                Err(Errno::WOULDBLOCK | Errno::NOBUFS | Errno::NOMEM) => return,
                // The producer is gone: nothing to release to.
                Err(_) => return self.pending.clear(),
            }
        }
    }
}

struct Reader {
    frame: TapFrame,
    /// The frame's encoded size so far.
    bytes: usize,
    index: HashMap<(String, String), u64>,
    preview: usize,
    sink: FrameSink,
    buf: Vec<u8>,
}

impl Reader {
    fn run(&mut self, stop: &AtomicBool, ends: &Receiver<(String, OwnedFd)>, wake: &OwnedFd) {
        let mut edges: Vec<Edge> = Vec::new();
        let mut last_flush = Instant::now();
        let mut ends_open = true;
        while !stop.load(Ordering::Relaxed) {
            while ends_open {
                match ends.try_recv() {
                    Ok((node, fd)) => {
                        edges.retain(|e| e.node != node);
                        edges.push(Edge { node, fd, regions: HashMap::new(), pending: HashMap::new() });
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => ends_open = false,
                }
            }
            let wait = FLUSH_EVERY.saturating_sub(last_flush.elapsed());
            let readable: Vec<bool> = {
                let mut fds: Vec<PollFd<'_>> = edges.iter().map(|e| PollFd::new(&e.fd, PollFlags::IN)).collect();
                fds.push(PollFd::new(wake, PollFlags::IN));
                match poll(&mut fds, Some(&transport::timespec(wait))) {
                    Ok(_) | Err(Errno::INTR) => {}
                    Err(e) => {
                        eprintln!("rill daemon: tap {}: poll failed: {e}", self.frame.tap);
                        return;
                    }
                }
                fds.iter().map(|f| !f.revents().is_empty()).collect()
            };
            if readable.last() == Some(&true) {
                let mut b = [0u8; 8];
                let _ = rustix::io::read(wake, &mut b);
            }
            let mut gone = Vec::new();
            for (i, edge) in edges.iter_mut().enumerate() {
                if !edge.pending.is_empty() {
                    edge.send_pending();
                }
                if readable[i] && !self.read(edge) {
                    gone.push(i);
                }
            }
            // The producer ended or restarted (its new edge comes on `ends`).
            for i in gone.into_iter().rev() {
                edges.remove(i);
            }
            if last_flush.elapsed() >= FLUSH_EVERY {
                self.flush();
                last_flush = Instant::now();
            }
        }
    }

    /// Reads what waits on `edge`; false when the producer's end closed.
    fn read(&mut self, edge: &mut Edge) -> bool {
        for _ in 0..READ_BATCH {
            let (n, fds) = match transport::recv_packet(edge.fd.as_fd(), &mut self.buf, true) {
                Ok((n, fds)) if n > 0 => (n, fds),
                Err(Errno::WOULDBLOCK) => return true,
                Err(Errno::CONNRESET) => continue,
                _ => return false,
            };
            let Ok(msg) = EdgeMsg::decode(&self.buf[..n]) else { continue };
            let received_ns = rill_proto::now_ns();
            match msg {
                EdgeMsg::Data { input, metadata, payload, new_region } => {
                    let data = match payload {
                        Payload::Inline(bytes) => {
                            Some((bytes.len() as u64, bytes[..bytes.len().min(self.preview)].to_vec()))
                        }
                        Payload::Shared { region, len, region_len } => {
                            if new_region && let Some(fd) = fds.into_iter().next() {
                                match Region::open(fd, region_len as usize) {
                                    Ok(mapped) => {
                                        edge.regions.insert(region, mapped);
                                    }
                                    Err(e) => {
                                        eprintln!("rill daemon: tap refuses a shared region of {}: {e}", edge.node)
                                    }
                                }
                            }
                            // Copied out, then released at once.
                            let copied = edge.regions.get(&region).filter(|m| len <= m.len() as u64).map(|m| {
                                let take = (len as usize).min(self.preview);
                                (len, m.bytes(take).to_vec())
                            });
                            edge.release(region);
                            copied
                        }
                    };
                    let Some((size, data)) = data else {
                        // (A region it could not map: lost, and said so.)
                        self.frame.dropped = self.frame.dropped.saturating_add(1);
                        continue;
                    };
                    // The edge's inputs are named after the outputs (and
                    // what the producer skipped).
                    let (output, skipped) = rill_proto::tap::parse_tap_input(&input);
                    let Some(&output) = self.index.get(&(edge.node.clone(), output.to_owned())) else { continue };
                    let timestamp_ns = metadata.timestamp_ns;
                    let sample = TapSample { output, timestamp_ns, received_ns, size, skipped, data };
                    self.push(sample);
                }
                EdgeMsg::Unmap { region } => {
                    edge.regions.remove(&region);
                }
                EdgeMsg::Release { .. } | EdgeMsg::Closed { .. } => {}
            }
        }
        true
    }

    fn push(&mut self, sample: TapSample) {
        let len = sample.encoded_len();
        if self.bytes + len > MAX_TAP_FRAME || self.frame.samples.len() as u64 >= MAX_TAP_SAMPLES {
            self.flush();
        }
        self.bytes += len;
        self.frame.samples.push(sample);
    }

    /// Hands the batch on; one that finds no room is dropped and counted.
    fn flush(&mut self) {
        if self.frame.samples.is_empty() && self.frame.dropped == 0 {
            return;
        }
        let count = self.frame.samples.len() as u64;
        let encoded = self.frame.encode();
        self.frame.samples.clear();
        self.bytes = TAP_HEADER;
        if (self.sink)(encoded) {
            self.frame.dropped = 0;
        } else {
            self.frame.dropped = self.frame.dropped.saturating_add(count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn every_shared_message_is_released_even_when_the_producer_reads_its_releases_late() {
        let frames: Arc<Mutex<Vec<TapFrame>>> = Arc::default();
        let kept = frames.clone();
        let sink: FrameSink = Arc::new(move |bytes| {
            let frame = TapFrame::decode(&bytes).expect("a frame that decodes");
            kept.lock().expect("lock").push(frame);
            true
        });
        let index = HashMap::from([(("cam".to_owned(), "image".to_owned()), 0)]);
        let (reader, ends) = TapReader::start(7, index, 4, sink).expect("starts");
        let (producer, theirs) = transport::socket_pair().expect("a socket pair");
        assert!(ends.send("cam", theirs));
        let region = Region::create(4096).expect("a region");
        let payload = Payload::Shared { region: 1, len: 100, region_len: region.len() as u64 };
        // Far more deliveries than the producer's socket holds releases
        // for: it reads none until the end.
        let sent = 3000u32;
        for i in 0..sent {
            let msg = EdgeMsg::Data {
                input: if i == 5 { tap_input_for_test() } else { "image".into() },
                metadata: rill_proto::Metadata { timestamp_ns: u64::from(i) },
                payload: payload.clone(),
                new_region: i == 0,
            };
            let mut buf = Vec::new();
            msg.encode(&mut buf);
            let fds: Vec<_> = (i == 0).then(|| region.fd().expect("its fd")).into_iter().collect();
            transport::send_packet(producer.as_fd(), &buf, &fds, false).expect("sent");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut released = 0u32;
        let mut buf = vec![0u8; 256];
        while released < sent && Instant::now() < deadline {
            match transport::recv_packet(producer.as_fd(), &mut buf, true) {
                Ok((n, _)) if n > 0 => {
                    if let Ok(EdgeMsg::Release { region: 1, count }) = EdgeMsg::decode(&buf[..n]) {
                        released += count;
                    }
                }
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        assert_eq!(released, sent, "every delivery released");
        let sampled = || frames.lock().expect("lock").iter().map(|f| f.samples.len()).sum::<usize>();
        while sampled() < sent as usize && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(reader);
        let frames = frames.lock().expect("lock");
        let samples: Vec<&TapSample> = frames.iter().flat_map(|f| &f.samples).collect();
        assert_eq!(samples.len(), sent as usize, "each one sampled");
        assert!(samples.iter().all(|s| s.size == 100 && s.data.len() == 4), "4-byte previews of 100 bytes");
        assert_eq!(samples[5].skipped, 3, "what the producer skipped before it");
    }

    fn tap_input_for_test() -> String {
        rill_proto::tap::tap_input("image", 3)
    }
}
