//! The client side of a tap (`topic echo`, `topic hz`, `record`): opens it
//! on the coordinator, then yields checked frames until the dataflow ends.
//! Closing the connection (this process ends) unwires it.

use anyhow::Context;
use rill_coordinator::client::{ControlClient, Frame};
use rill_proto::coord::{ControlRequest, ControlResponse, TapOutput};
use rill_proto::tap::TapFrame;

use crate::access::ControlAccess;

/// An open tap.
pub struct Tap {
    client: ControlClient,
    pub name: String,
    pub uuid: String,
    pub outputs: Vec<TapOutput>,
}

impl Tap {
    /// Taps `outputs` (`node/output`; none: every output) of `dataflow`,
    /// `preview` payload bytes per message, at most one message of an
    /// output per `every_us` (0: all).
    pub async fn open(
        access: &ControlAccess,
        dataflow: &str,
        outputs: Vec<String>,
        (preview, every_us): (u64, u64),
    ) -> anyhow::Result<Self> {
        let mut client = access.connect().await?;
        let request = ControlRequest::Tap { dataflow: dataflow.to_owned(), outputs, preview, every_us };
        match client.request(&request).await? {
            ControlResponse::Tapped { uuid, name, outputs, .. } => Ok(Self { client, name, uuid, outputs }),
            other => anyhow::bail!("unexpected reply from the coordinator: {other:?}"),
        }
    }

    /// The next frame; `None` once the dataflow ended. A frame that does
    /// not decode, or names an output the tap does not have, is an error.
    pub async fn next(&mut self) -> anyhow::Result<Option<TapFrame>> {
        match self.client.next_frame().await.context("the tap's connection to the coordinator ended")? {
            Frame::Tap(bytes) => {
                let frame = TapFrame::decode(&bytes).context("the coordinator sent a malformed tap frame")?;
                if let Some(bad) = frame.samples.iter().find(|s| s.output as usize >= self.outputs.len()) {
                    anyhow::bail!("a tap frame names output #{} of {}", bad.output, self.outputs.len());
                }
                Ok(Some(frame))
            }
            Frame::Reply(ControlResponse::TapEnd { .. }) => Ok(None),
            Frame::Reply(other) => anyhow::bail!("unexpected reply from the coordinator: {other:?}"),
        }
    }

    /// `node/output` of a sample's output index (checked by [`Tap::next`]).
    pub fn topic(&self, output: u64) -> String {
        self.outputs.get(output as usize).map(|o| format!("{}/{}", o.node, o.output)).unwrap_or_default()
    }

    /// Unwires the tap now.
    pub async fn close(self) {
        self.client.close().await;
    }
}
