//! `GetDebug`'s process-cache dump. The cache belongs to the pipeline task
//! (no lock on the event path), so the API asks that task for a copy
//! through a small bounded channel; a dump asked for while others wait is
//! refused rather than queued without bound.

use proto::tetragon::{DumpProcessCacheReqArgs, ProcessInternal};
use serving::api::DumpFuture;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

/// Dumps waiting at most.
const PENDING: usize = 2;

/// Largest dump sent: under the 4 MiB a default Go or Python gRPC client
/// takes in one message (what does not fit is left out, and logged).
pub const MAX_REPLY_BYTES: usize = (4 << 20) - (64 << 10);

pub struct DumpRequest {
    pub args: DumpProcessCacheReqArgs,
    pub reply: oneshot::Sender<Vec<ProcessInternal>>,
}

/// The API's side: asks for dumps.
#[derive(Clone)]
pub struct Dumps(mpsc::Sender<DumpRequest>);

/// The pipeline's side: answers them.
pub type DumpRequests = mpsc::Receiver<DumpRequest>;

pub fn channel() -> (Dumps, DumpRequests) {
    let (tx, rx) = mpsc::channel(PENDING);
    (Dumps(tx), rx)
}

impl Dumps {
    pub fn request(&self, args: DumpProcessCacheReqArgs) -> DumpFuture {
        let (reply, answer) = oneshot::channel();
        let sent = self.0.try_send(DumpRequest { args, reply });
        Box::pin(async move {
            match sent {
                Ok(()) => answer.await.map_err(|_| Status::unavailable("the sensor is shutting down")),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    Err(Status::resource_exhausted("other process-cache dumps are pending; try again"))
                }
                Err(mpsc::error::TrySendError::Closed(_)) => Err(Status::unavailable("the sensor is shutting down")),
            }
        })
    }
}
