//! The sending side of `vigil.relay.v1.Ingest` without re-encoding events.
//!
//! A sensor streams every event to each relay replica, and the same events
//! may already have been encoded for its own `GetEvents` clients
//! ([`SharedEvent::encoded`](crate::shared::SharedEvent::encoded)). A
//! [`BatchEncoder`] assembles an `IngestMessage { batch }` around those
//! bytes, and [`stream`] sends such pre-encoded messages as they are.

use std::marker::PhantomData;

use prost::Message;
use prost::bytes::{BufMut, Bytes};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};

use crate::vigil::relay::v1::{IngestMessage, IngestReply, ingest_message};

/// Field numbers of the messages assembled here (see `relay.proto`).
const INGEST_MESSAGE_BATCH: u32 = 2;
const BATCH_EVENTS: u32 = 1;
const BATCH_LOST: u32 = 2;
const BATCH_SKIPPED: u32 = 3;
const SEQUENCED_SEQ: u32 = 1;
const SEQUENCED_EVENT: u32 = 2;

/// Builds the encoding of `IngestMessage { batch: Batch { events, lost } }`
/// from events that are already encoded `GetEventsResponse`s.
#[derive(Debug, Default)]
pub struct BatchEncoder {
    /// The encoded `events` entries so far.
    body: Vec<u8>,
    count: usize,
}

impl BatchEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `SequencedEvent { seq, event }` whose event encoding is the
    /// concatenation of `parts` (fields of one message may be split).
    pub fn push(&mut self, seq: u64, parts: &[&[u8]]) {
        let event_len: usize = parts.iter().map(|p| p.len()).sum();
        let entry_len = key_len(SEQUENCED_SEQ)
            + encoded_len_varint(seq)
            + key_len(SEQUENCED_EVENT)
            + encoded_len_varint(event_len as u64)
            + event_len;
        encode_key(BATCH_EVENTS, WireType::LengthDelimited, &mut self.body);
        encode_varint(entry_len as u64, &mut self.body);
        encode_key(SEQUENCED_SEQ, WireType::Varint, &mut self.body);
        encode_varint(seq, &mut self.body);
        encode_key(SEQUENCED_EVENT, WireType::LengthDelimited, &mut self.body);
        encode_varint(event_len as u64, &mut self.body);
        for p in parts {
            self.body.extend_from_slice(p);
        }
        self.count += 1;
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The encoded message, with `lost` events reported beside the batch
    /// and the `skipped` sequence numbers it declares.
    pub fn finish(self, lost: u64, skipped: u64) -> Bytes {
        let varint_len = |field: u32, v: u64| if v > 0 { key_len(field) + encoded_len_varint(v) } else { 0 };
        let batch_len = self.body.len() + varint_len(BATCH_LOST, lost) + varint_len(BATCH_SKIPPED, skipped);
        let mut out =
            Vec::with_capacity(key_len(INGEST_MESSAGE_BATCH) + encoded_len_varint(batch_len as u64) + batch_len);
        encode_key(INGEST_MESSAGE_BATCH, WireType::LengthDelimited, &mut out);
        encode_varint(batch_len as u64, &mut out);
        out.extend_from_slice(&self.body);
        for (field, v) in [(BATCH_LOST, lost), (BATCH_SKIPPED, skipped)] {
            if v > 0 {
                encode_key(field, WireType::Varint, &mut out);
                encode_varint(v, &mut out);
            }
        }
        Bytes::from(out)
    }
}

/// `IngestMessage { hello }`, encoded.
pub fn hello(hello: crate::vigil::relay::v1::Hello) -> Bytes {
    IngestMessage { msg: Some(ingest_message::Msg::Hello(hello)) }.encode_to_vec().into()
}

/// `IngestMessage { policy_report }`, encoded.
pub fn policy_report(report: crate::vigil::relay::v1::PolicyReport) -> Bytes {
    IngestMessage { msg: Some(ingest_message::Msg::PolicyReport(report)) }.encode_to_vec().into()
}

/// Sends already-encoded messages as they are; decodes replies with
/// tonic-prost's own decoder.
pub struct RawCodec<D>(PhantomData<D>);

impl<D> Default for RawCodec<D> {
    fn default() -> Self {
        RawCodec(PhantomData)
    }
}

pub struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl<D: Message + Default + Send + 'static> Codec for RawCodec<D> {
    type Encode = Bytes;
    type Decode = D;
    type Encoder = RawEncoder;
    type Decoder = tonic_prost::ProstDecoder<D>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstCodec::<D, D>::raw_decoder(BufferSettings::default())
    }
}

/// Opens `vigil.relay.v1.Ingest/Stream` on `channel`, sending `messages`
/// (each an encoded `IngestMessage`) as they are, with `token` (a
/// Kubernetes service-account token naming the node) as a bearer token.
pub async fn stream(
    channel: tonic::transport::Channel,
    messages: impl tokio_stream::Stream<Item = Bytes> + Send + 'static,
    max_message_size: usize,
    token: Option<&str>,
) -> Result<tonic::Streaming<IngestReply>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(max_message_size);
    grpc.ready().await.map_err(|e| Status::unavailable(format!("relay connection not ready: {e}")))?;
    let path = http_path("/vigil.relay.v1.Ingest/Stream");
    let mut request = tonic::Request::new(messages);
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::invalid_argument("the relay token holds characters a header cannot carry"))?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(grpc.streaming(request, path, RawCodec::<IngestReply>::default()).await?.into_inner())
}

fn http_path(path: &'static str) -> tonic::codegen::http::uri::PathAndQuery {
    tonic::codegen::http::uri::PathAndQuery::from_static(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timestamp;
    use crate::tetragon::GetEventsResponse;
    use crate::vigil::relay::v1::{Batch, SequencedEvent};

    fn exec(binary: &str, seconds: i64) -> GetEventsResponse {
        GetEventsResponse { time: Some(Timestamp { seconds, nanos: 5 }), ..crate::test_exec(binary) }
    }

    #[test]
    fn assembled_batches_decode_as_prost_would_encode_them() {
        let events = [(1u64, exec("/a", 10)), (300, exec(&"/long".repeat(40), 11))];
        for lost in [0, 7, 1 << 40] {
            let mut b = BatchEncoder::new();
            for (seq, e) in &events {
                // Split in two parts, as a sender appending a field would.
                let bytes = e.encode_to_vec();
                let (head, tail) = bytes.split_at(bytes.len() / 2);
                b.push(*seq, &[head, tail]);
            }
            assert_eq!(b.len(), 2);
            let expected = IngestMessage {
                msg: Some(ingest_message::Msg::Batch(Batch {
                    events: events
                        .iter()
                        .map(|(seq, e)| SequencedEvent { seq: *seq, event: Some(Box::new(e.clone())) })
                        .collect(),
                    lost,
                    skipped: lost / 2,
                })),
            };
            let bytes = b.finish(lost, lost / 2);
            assert_eq!(IngestMessage::decode(bytes.clone()).unwrap(), expected);
            assert_eq!(bytes.to_vec(), expected.encode_to_vec(), "byte for byte what prost writes");
        }
        let empty = BatchEncoder::new();
        assert!(empty.is_empty());
        assert_eq!(
            IngestMessage::decode(empty.finish(3, 0)).unwrap().msg,
            Some(ingest_message::Msg::Batch(Batch { events: vec![], lost: 3, skipped: 0 }))
        );
    }
}
