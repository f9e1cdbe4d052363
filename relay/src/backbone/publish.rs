//! The ingest half: a sensor's accepted batch onto the stream. Every event
//! is published without waiting (the client bounds the acknowledgements
//! in flight, `--backbone-max-in-flight`), then every acknowledgement is
//! awaited: only a batch JetStream stored whole is acknowledged to the
//! sensor.

use async_nats::jetstream::message::PublishMessage;

use super::{Backbone, HEADER_BOOT, HEADER_LOST, HEADER_SEQ, HEADER_SOURCE};
use crate::merge::Arrival;

/// Why a batch did not reach the backbone (the sensor keeps it and sends
/// it again).
#[derive(Debug, thiserror::Error)]
#[error("the backbone did not store the batch: {0}")]
pub struct PublishError(String);

/// Where one sensor stream's events go.
pub struct Origin<'a> {
    pub node: &'a str,
    pub boot_id: &'a str,
    pub source: u64,
}

/// The message id JetStream deduplicates on: the sensor stream and the
/// event's number in it, so a re-sent event is dropped whichever ingest
/// relay takes it.
pub fn message_id(source: u64, seq: u64) -> String {
    format!("{source:016x}-{seq}")
}

impl Backbone {
    /// How far the backbone holds `origin`'s sensor stream: the sequence
    /// number on the node's last message if that came from the same sensor
    /// instance, else 0. A sensor that moves to another ingest relay is so
    /// told what the one before stored, and sends only the rest.
    pub async fn stored_through(&self, origin: &Origin<'_>) -> Result<u64, PublishError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        let last = match self.stream.get_last_raw_message_by_subject(&self.subject_of(origin.node)).await {
            Ok(m) => m,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(0),
            Err(e) => return Err(PublishError(format!("reading the node's last event: {e}"))),
        };
        let header = |name: &str| last.headers.get(name).and_then(|v| v.as_str().parse::<u64>().ok());
        Ok(match (header(HEADER_SOURCE), header(HEADER_SEQ)) {
            (Some(source), Some(seq)) if source == origin.source => seq,
            _ => 0,
        })
    }

    /// Publishes `events` of `origin` and, if `lost` is not zero, a loss
    /// notice (numbered after the batch's last sequence `last_seq`), and
    /// waits until JetStream has stored them all.
    pub async fn publish(
        &self,
        origin: &Origin<'_>,
        events: &[Arrival],
        lost: u64,
        last_seq: u64,
    ) -> Result<(), PublishError> {
        let subject = self.subject_of(origin.node);
        let source = origin.source.to_string();
        let mut acks = Vec::with_capacity(events.len() + 1);
        for a in events {
            let message = PublishMessage::build()
                .payload(a.event.encoded().clone())
                .message_id(message_id(origin.source, a.seq))
                .header(HEADER_BOOT, origin.boot_id)
                .header(HEADER_SOURCE, source.as_str())
                .header(HEADER_SEQ, a.seq.to_string().as_str());
            let ack = self.js.send_publish(subject.clone(), message).await.map_err(|e| PublishError(e.to_string()))?;
            acks.push(ack);
        }
        if lost > 0 {
            let message = PublishMessage::build()
                .message_id(format!("{}-lost", message_id(origin.source, last_seq)))
                .header(HEADER_SOURCE, source.as_str())
                .header(HEADER_SEQ, last_seq.to_string().as_str())
                .header(HEADER_LOST, lost.to_string().as_str());
            let ack = self.js.send_publish(subject.clone(), message).await.map_err(|e| PublishError(e.to_string()))?;
            acks.push(ack);
        }
        // The acknowledgements come back on their own; waiting in order
        // costs no more than waiting for the last.
        for ack in acks {
            ack.await.map_err(|e| PublishError(e.to_string()))?;
        }
        Ok(())
    }
}
