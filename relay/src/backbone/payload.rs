//! A message's payload: a run of one sensor stream's events, laid out so
//! that consumers other than Vigil read it with stock tools.
//!
//! - `protobuf` (the default): each event as Tetragon's
//!   `GetEventsResponse`, preceded by its length as a varint: protobuf's
//!   delimited form (Go's `protodelim`, Java's `parseDelimitedFrom`).
//! - `json`: each event as one line of Tetragon's JSON, as
//!   `tetra getevents -o json` and the export file write it, each line
//!   ending in `\n` (`nats sub … | jq` reads it).
//!
//! The header `Vigil-Format` names the layout, so query relays read both
//! whatever their own `--backbone-format`.

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use prost::Message as _;
use proto::shared::SharedEvent;
use proto::tetragon::GetEventsResponse;

/// How events are laid out in a message (`--backbone-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Length-delimited `GetEventsResponse` protobufs.
    #[default]
    Protobuf,
    /// Tetragon's JSON, a line per event.
    Json,
}

impl Format {
    /// The `Vigil-Format` header's value.
    pub fn name(self) -> &'static str {
        match self {
            Format::Protobuf => "protobuf",
            Format::Json => "json",
        }
    }

    /// The format a `Vigil-Format` header names; no header is `protobuf`.
    pub fn from_header(value: Option<&str>) -> Option<Format> {
        match value {
            None | Some("protobuf") => Some(Format::Protobuf),
            Some("json") => Some(Format::Json),
            Some(_) => None,
        }
    }
}

/// One event, encoded for a payload.
pub enum Item {
    Protobuf(Bytes),
    Json(String),
}

impl Item {
    pub fn of(format: Format, event: &SharedEvent) -> Item {
        match format {
            Format::Protobuf => Item::Protobuf(event.encoded().clone()),
            Format::Json => Item::Json(proto::json::to_json_line(event.event())),
        }
    }

    /// Bytes it takes in a payload, its framing included.
    pub fn framed_len(&self) -> usize {
        match self {
            Item::Protobuf(b) => prost::encoding::encoded_len_varint(b.len() as u64) + b.len(),
            Item::Json(line) => line.len() + 1,
        }
    }

    pub fn write(&self, out: &mut BytesMut) {
        match self {
            Item::Protobuf(b) => {
                prost::encoding::encode_varint(b.len() as u64, out);
                out.extend_from_slice(b);
            }
            Item::Json(line) => {
                out.extend_from_slice(line.as_bytes());
                out.put_u8(b'\n');
            }
        }
    }
}

/// Why a payload could not be read (the message is skipped and counted).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("event {index}: its length runs past the payload")]
    Truncated { index: usize },
    #[error("event {index}: {len} bytes, over the {limit}-byte limit")]
    TooLarge { index: usize, len: usize, limit: usize },
    #[error("event {index}: not an event ({reason})")]
    NotAnEvent { index: usize, reason: String },
}

/// A decoded event and, for protobuf payloads, its encoding as found (so
/// the relay does not encode it again for its clients).
pub struct Decoded {
    pub event: Box<GetEventsResponse>,
    pub encoded: Option<Bytes>,
}

/// The events of `payload`, each at most `limit` bytes.
pub fn decode(format: Format, payload: &Bytes, limit: usize) -> Result<Vec<Decoded>, PayloadError> {
    let mut out = Vec::new();
    match format {
        Format::Protobuf => {
            let mut rest = payload.clone();
            while rest.has_remaining() {
                let index = out.len();
                let len = prost::encoding::decode_varint(&mut rest).map_err(|_| PayloadError::Truncated { index })?;
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if len > limit {
                    return Err(PayloadError::TooLarge { index, len, limit });
                }
                if len > rest.remaining() {
                    return Err(PayloadError::Truncated { index });
                }
                let bytes = rest.split_to(len);
                let event = GetEventsResponse::decode(bytes.clone())
                    .map_err(|e| PayloadError::NotAnEvent { index, reason: e.to_string() })?;
                out.push(checked(index, event, Some(bytes))?);
            }
        }
        Format::Json => {
            for (index, line) in payload.split(|b| *b == b'\n').filter(|l| !l.is_empty()).enumerate() {
                if line.len() > limit {
                    return Err(PayloadError::TooLarge { index, len: line.len(), limit });
                }
                let event = std::str::from_utf8(line)
                    .map_err(|e| e.to_string())
                    .and_then(|line| proto::json::from_json_line(line).map_err(|e| e.to_string()))
                    .map_err(|reason| PayloadError::NotAnEvent { index, reason })?;
                out.push(checked(index, event, None)?);
            }
        }
    }
    Ok(out)
}

/// An event must hold one; an encoding is kept only where it is what the
/// relay would make (no resume positions: those are the relay's to set).
fn checked(index: usize, event: GetEventsResponse, encoded: Option<Bytes>) -> Result<Decoded, PayloadError> {
    if event.event.is_none() {
        return Err(PayloadError::NotAnEvent { index, reason: "no event in it".into() });
    }
    let encoded = encoded.filter(|_| event.resume.is_empty());
    Ok(Decoded { event: Box::new(event), encoded })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::tetragon::{ProcessExec, get_events_response};

    fn exec(binary: &str) -> SharedEvent {
        SharedEvent::new(GetEventsResponse {
            event: Some(get_events_response::Event::ProcessExec(ProcessExec {
                process: Some(proto::tetragon::Process { binary: binary.into(), ..Default::default() }),
                ..Default::default()
            })),
            node_name: "n1".into(),
            ..Default::default()
        })
    }

    fn payload(format: Format, events: &[SharedEvent]) -> Bytes {
        let mut out = BytesMut::new();
        for e in events {
            let item = Item::of(format, e);
            let before = out.len();
            item.write(&mut out);
            assert_eq!(out.len() - before, item.framed_len());
        }
        out.freeze()
    }

    #[test]
    fn both_formats_carry_a_run_of_events_back_as_sent() {
        let events = [exec("/bin/a"), exec("/usr/bin/b")];
        for format in [Format::Protobuf, Format::Json] {
            let got = decode(format, &payload(format, &events), 1 << 20).unwrap();
            let binaries: Vec<_> = got
                .iter()
                .map(|d| match &d.event.event {
                    Some(get_events_response::Event::ProcessExec(e)) => e.process.as_ref().unwrap().binary.clone(),
                    _ => String::new(),
                })
                .collect();
            assert_eq!(binaries, ["/bin/a", "/usr/bin/b"], "{format:?}");
            assert_eq!(got[1].encoded.as_ref(), (format == Format::Protobuf).then(|| events[1].encoded()));
        }
        // The JSON form is Tetragon's line, one per event.
        let json = payload(Format::Json, &events);
        let first = std::str::from_utf8(&json).unwrap().lines().next().unwrap().to_owned();
        assert_eq!(first, r#"{"process_exec":{"process":{"binary":"/bin/a"}},"node_name":"n1"}"#);
    }

    #[test]
    fn a_broken_payload_is_named_by_event_and_never_read_past() {
        let events = [exec("/bin/a"), exec("/bin/b")];
        let good = payload(Format::Protobuf, &events);
        let cut = good.slice(..good.len() - 1);
        assert_eq!(decode(Format::Protobuf, &cut, 1 << 20).err(), Some(PayloadError::Truncated { index: 1 }));
        let len = events[0].encoded().len();
        assert_eq!(
            decode(Format::Protobuf, &good, len - 1).err(),
            Some(PayloadError::TooLarge { index: 0, len, limit: len - 1 })
        );
        let mut huge = BytesMut::new();
        prost::encoding::encode_varint(u64::MAX, &mut huge);
        assert_eq!(
            decode(Format::Protobuf, &huge.freeze(), 64).err(),
            Some(PayloadError::TooLarge { index: 0, len: usize::MAX, limit: 64 })
        );
        let empty_event = Bytes::from_static(&[0]);
        assert!(matches!(decode(Format::Protobuf, &empty_event, 64), Err(PayloadError::NotAnEvent { index: 0, .. })));
        let json = Bytes::from_static(b"{\"process_exec\":{}}\nnot json\n");
        assert!(matches!(decode(Format::Json, &json, 64), Err(PayloadError::NotAnEvent { index: 1, .. })));
        assert_eq!(Format::from_header(Some("xml")), None);
        assert_eq!(Format::from_header(None), Some(Format::Protobuf));
    }
}
