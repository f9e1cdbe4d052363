//! The ingest half: a sensor's accepted batch onto the stream, as runs of
//! events numbered without a gap, one message each (bounded by the
//! servers' `max_payload`). Every message is published without waiting
//! (the client bounds the acknowledgements in flight,
//! `--backbone-max-in-flight`), then every acknowledgement is awaited:
//! only a batch JetStream stored whole is acknowledged to the sensor.

use async_nats::jetstream::message::PublishMessage;

use bytes::BytesMut;

use super::payload::Item;
use super::{Backbone, HEADER_BOOT, HEADER_FIRST_SEQ, HEADER_FORMAT, HEADER_LOST, HEADER_SEQ, HEADER_SOURCE};
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
/// numbers of the run's first and last events, so a run sent again is
/// dropped whichever ingest relay takes it. (A run re-sent cut otherwise
/// gets through; query relays then drop the events they already took, by
/// sequence number.)
pub fn message_id(source: u64, first: u64, last: u64) -> String {
    format!("{source:016x}-{first}-{last}")
}

/// A batch handed to JetStream, not known stored yet.
#[must_use = "a batch is stored only once its acknowledgements came"]
pub struct Sent {
    acks: Vec<async_nats::jetstream::context::PublishAckFuture>,
    too_large: u64,
    bytes: usize,
}

impl Sent {
    /// Payload bytes handed over.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Waits until JetStream stored the whole batch. Returns the events no
    /// message could carry (larger than the servers' `max_payload` once
    /// encoded), which the loss notice counted.
    pub async fn stored(self) -> Result<u64, PublishError> {
        // The acknowledgements come back on their own; waiting in order
        // costs no more than waiting for the last.
        for ack in self.acks {
            ack.await.map_err(|e| PublishError(e.to_string()))?;
        }
        Ok(self.too_large)
    }
}

/// One run being filled.
struct Run {
    first: u64,
    last: u64,
    payload: BytesMut,
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
        let header = |name: &str| super::header_number(&last.headers, name);
        Ok(match (header(HEADER_SOURCE), header(HEADER_SEQ)) {
            (Some(source), Some(seq)) if source == origin.source => seq,
            _ => 0,
        })
    }

    /// Publishes `events` of `origin` and waits until JetStream stored
    /// them all ([`Backbone::send_batch`], then [`Sent::stored`]).
    pub async fn publish(
        &self,
        origin: &Origin<'_>,
        events: &[Arrival],
        lost: u64,
        last_seq: u64,
    ) -> Result<u64, PublishError> {
        self.send_batch(origin, events, lost, last_seq).await?.stored().await
    }

    /// Hands `events` of `origin` to JetStream and, if any were `lost` (or
    /// are too large for a message), a loss notice numbered after the
    /// batch's last sequence `last_seq`. What JetStream stored is known
    /// from the returned [`Sent`]: an ingest relay sends a sensor's next
    /// batch meanwhile.
    pub async fn send_batch(
        &self,
        origin: &Origin<'_>,
        events: &[Arrival],
        lost: u64,
        last_seq: u64,
    ) -> Result<Sent, PublishError> {
        let subject = async_nats::Subject::from(self.subject_of(origin.node));
        let source = origin.source.to_string();
        let format = self.settings.format;
        let mut acks = Vec::new();
        let mut too_large = 0;
        let mut bytes = 0;
        let mut run: Option<Run> = None;
        for a in events {
            let item = Item::of(format, &a.event);
            let len = item.framed_len();
            if len > self.max_payload {
                too_large += 1;
                continue;
            }
            let joins = run.as_ref().is_some_and(|r| a.seq == r.last + 1 && r.payload.len() + len <= self.max_payload);
            if !joins && let Some(full) = run.take() {
                bytes += full.payload.len();
                acks.push(self.send(&subject, origin, &source, full).await?);
            }
            let r = run.get_or_insert_with(|| Run { first: a.seq, last: a.seq, payload: BytesMut::new() });
            r.last = a.seq;
            item.write(&mut r.payload);
        }
        if let Some(full) = run.take() {
            bytes += full.payload.len();
            acks.push(self.send(&subject, origin, &source, full).await?);
        }
        let lost = lost + too_large;
        if lost > 0 {
            let message = PublishMessage::build()
                .message_id(format!("{:016x}-{last_seq}-lost", origin.source))
                .header(HEADER_SOURCE, source.as_str())
                .header(HEADER_SEQ, last_seq.to_string().as_str())
                .header(HEADER_LOST, lost.to_string().as_str());
            let ack = self.js.send_publish(subject.clone(), message).await.map_err(|e| PublishError(e.to_string()))?;
            acks.push(ack);
        }
        Ok(Sent { acks, too_large, bytes })
    }

    async fn send(
        &self,
        subject: &async_nats::Subject,
        origin: &Origin<'_>,
        source: &str,
        run: Run,
    ) -> Result<async_nats::jetstream::context::PublishAckFuture, PublishError> {
        let message = PublishMessage::build()
            .payload(run.payload.freeze())
            .message_id(message_id(origin.source, run.first, run.last))
            .header(HEADER_BOOT, origin.boot_id)
            .header(HEADER_SOURCE, source)
            .header(HEADER_FIRST_SEQ, run.first.to_string().as_str())
            .header(HEADER_SEQ, run.last.to_string().as_str())
            .header(HEADER_FORMAT, self.settings.format.name());
        self.js.send_publish(subject.clone(), message).await.map_err(|e| PublishError(e.to_string()))
    }
}
