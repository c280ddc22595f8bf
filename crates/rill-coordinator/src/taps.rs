//! Open taps (`rill topic echo`, `topic hz`, `record`): which client each
//! one streams to. Daemons send tap frames ([`rill_proto::tap`]); the
//! coordinator reads their header, checks the tap reads a node placed on
//! that daemon, and passes the frame on to the client's connection through a bounded
//! queue. A client that does not keep up loses whole frames, counted in the
//! `dropped` of the next frame it gets: the producer and the daemon never
//! wait for it.

use std::collections::HashMap;

use rill_proto::coord::{CoordinatorMessage, TapOutput};
use tokio::sync::mpsc;

pub use rill_proto::tap::MAX_TAPS;
/// Frames queued for one client (each at most
/// [`rill_proto::tap::MAX_TAP_FRAME`]).
pub const CLIENT_FRAMES: usize = 8;

struct Tap {
    uuid: String,
    outputs: Vec<TapOutput>,
    preview: u64,
    every_us: u64,
    tx: mpsc::Sender<Vec<u8>>,
    /// Samples in frames the client's queue had no room for, not yet told.
    dropped: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TapError {
    #[error("dataflow {0} has {MAX_TAPS} taps open already (each costs its producers): close one")]
    TooMany(String),
}

/// What became of a frame a daemon sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Relayed {
    Passed,
    /// The client's queue was full: counted as dropped.
    Dropped,
    /// No such tap (closed meanwhile), or not one this daemon serves.
    Unknown,
    Malformed,
}

#[derive(Default)]
pub struct Taps {
    next: u64,
    open: HashMap<u64, Tap>,
}

impl Taps {
    /// Opens a tap; frames for it come out of the receiver.
    pub fn open(
        &mut self,
        uuid: &str,
        outputs: Vec<TapOutput>,
        preview: u64,
        every_us: u64,
    ) -> Result<(u64, mpsc::Receiver<Vec<u8>>), TapError> {
        if self.open.values().filter(|t| t.uuid == uuid).count() >= MAX_TAPS {
            return Err(TapError::TooMany(uuid.to_owned()));
        }
        // Unique across coordinator restarts too: a daemon's frame of a
        // tap from before cannot reach a new one.
        if self.next == 0 {
            self.next = rill_proto::now_ns();
        }
        self.next += 1;
        let (tx, rx) = mpsc::channel(CLIENT_FRAMES);
        self.open.insert(self.next, Tap { uuid: uuid.to_owned(), outputs, preview, every_us, tx, dropped: 0 });
        Ok((self.next, rx))
    }

    /// Closes a tap: what its daemons must be told.
    pub fn close(&mut self, tap: u64) -> Option<CoordinatorMessage> {
        self.open.remove(&tap).map(|t| CoordinatorMessage::Untap { uuid: t.uuid, tap })
    }

    /// The `Tap` messages of dataflow `uuid`'s open taps (for a daemon that
    /// (re)connected or was given nodes of it).
    pub fn of(&self, uuid: &str) -> Vec<CoordinatorMessage> {
        let mut taps: Vec<(&u64, &Tap)> = self.open.iter().filter(|(_, t)| t.uuid == uuid).collect();
        taps.sort_by_key(|(id, _)| **id);
        taps.into_iter().map(|(id, t)| tap_message(*id, t)).collect()
    }

    /// Uuids with open taps.
    pub fn tapped(&self) -> Vec<String> {
        let mut uuids: Vec<String> = self.open.values().map(|t| t.uuid.clone()).collect();
        uuids.sort();
        uuids.dedup();
        uuids
    }

    /// Dataflow `uuid` ended: its taps' clients are let go (their queues close).
    pub fn ended(&mut self, uuid: &str) {
        self.open.retain(|_, t| t.uuid != uuid);
    }

    /// The tap a frame is for, and the nodes it reads (to check the daemon
    /// that sent it runs one of them).
    pub fn route(&self, frame: &[u8]) -> Option<(u64, String, Vec<String>)> {
        let (tap, _, _) = rill_proto::tap::header(frame).ok()?;
        let t = self.open.get(&tap)?;
        Some((tap, t.uuid.clone(), t.outputs.iter().map(|o| o.node.clone()).collect()))
    }

    /// Passes a frame on to its tap's client, without waiting.
    pub fn relay(&mut self, tap: u64, mut frame: Vec<u8>) -> Relayed {
        let Ok((_, dropped, count)) = rill_proto::tap::header(&frame) else { return Relayed::Malformed };
        if frame.len() > rill_proto::tap::MAX_TAP_FRAME {
            return Relayed::Malformed;
        }
        let Some(t) = self.open.get_mut(&tap) else { return Relayed::Unknown };
        if t.dropped > 0 {
            rill_proto::tap::add_dropped(&mut frame, t.dropped);
        }
        match t.tx.try_send(frame) {
            Ok(()) => {
                t.dropped = 0;
                Relayed::Passed
            }
            Err(_) => {
                // Its samples, and those the daemon had dropped before it.
                t.dropped = t.dropped.saturating_add(count).saturating_add(dropped);
                Relayed::Dropped
            }
        }
    }
}

fn tap_message(tap: u64, t: &Tap) -> CoordinatorMessage {
    let (outputs, preview, every_us) = (t.outputs.clone(), t.preview, t.every_us);
    CoordinatorMessage::Tap { uuid: t.uuid.clone(), tap, outputs, preview, every_us }
}

/// The message that opens `tap` on daemons.
pub fn open_message(taps: &Taps, tap: u64) -> Option<CoordinatorMessage> {
    taps.open.get(&tap).map(|t| tap_message(tap, t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rill_proto::tap::{TapFrame, TapSample};

    fn frame(tap: u64, samples: usize) -> Vec<u8> {
        let sample = TapSample { output: 0, timestamp_ns: 1, received_ns: 2, size: 1, skipped: 0, data: vec![1] };
        TapFrame { tap, dropped: 0, samples: vec![sample; samples] }.encode()
    }

    fn output(node: &str) -> Vec<TapOutput> {
        vec![TapOutput { node: node.into(), output: "out".into(), machine: String::new() }]
    }

    #[test]
    fn a_slow_client_loses_whole_frames_counted_on_the_next_one_and_taps_are_bounded() {
        let mut taps = Taps::default();
        let (tap, mut rx) = taps.open("u", output("src"), 16, 0).expect("opens");
        assert_eq!(taps.route(&frame(tap, 1)), Some((tap, "u".to_owned(), vec!["src".to_owned()])));
        for _ in 0..CLIENT_FRAMES {
            assert_eq!(taps.relay(tap, frame(tap, 3)), Relayed::Passed);
        }
        assert_eq!(taps.relay(tap, frame(tap, 5)), Relayed::Dropped);
        let mut reported = TapFrame::decode(&frame(tap, 2)).expect("decodes");
        reported.dropped = 4;
        assert_eq!(taps.relay(tap, reported.encode()), Relayed::Dropped);
        for _ in 0..CLIENT_FRAMES {
            rx.try_recv().expect("queued");
        }
        assert_eq!(taps.relay(tap, frame(tap, 1)), Relayed::Passed);
        let told = TapFrame::decode(&rx.try_recv().expect("passed")).expect("decodes");
        assert_eq!(told.dropped, 11, "the 5 + 2 samples of the dropped frames, and the 4 the daemon had dropped");
        let huge = TapFrame {
            tap,
            dropped: 0,
            samples: vec![TapSample {
                output: 0,
                timestamp_ns: 1,
                received_ns: 2,
                size: 9 << 20,
                skipped: 0,
                data: vec![0; 9 << 20],
            }],
        };
        assert_eq!(taps.relay(tap, huge.encode()), Relayed::Malformed, "larger than a daemon sends");

        assert_eq!(taps.relay(99, frame(99, 1)), Relayed::Unknown);
        assert_eq!(taps.relay(tap, vec![9, 9]), Relayed::Malformed);
        assert_eq!(taps.route(&frame(99, 1)), None);

        for _ in 1..MAX_TAPS {
            taps.open("u", output("src"), 0, 0).expect("opens");
        }
        assert_eq!(taps.open("u", output("src"), 0, 0).err(), Some(TapError::TooMany("u".into())));
        assert!(taps.open("other", output("src"), 0, 0).is_ok(), "the bound is per dataflow");

        assert_eq!(taps.of("u").len(), MAX_TAPS);
        assert!(matches!(taps.close(tap), Some(CoordinatorMessage::Untap { tap: t, .. }) if t == tap));
        taps.ended("u");
        assert!(taps.of("u").is_empty());
        assert_eq!(taps.tapped(), vec!["other".to_owned()]);
        assert!(rx.try_recv().is_err(), "the client's queue closed");
    }
}
