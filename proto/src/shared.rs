//! Events fanned out to many `GetEvents` streams, encoded once.
//!
//! A relay with hundreds of clients would otherwise clone and protobuf-encode
//! every event once per client. A [`SharedEvent`] keeps the decoded event
//! (for filters) and, from the first stream that sends it on, its encoded
//! bytes; every other stream copies those bytes. The `GetEvents` server in
//! [`fine_guidance_sensors_server`] streams [`OutEvent`]s, whose wire form
//! is exactly a `tetragon.GetEventsResponse`.

use std::sync::{Arc, OnceLock};

use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType};
use prost::{DecodeError, Message};

use crate::tetragon::{GetEventsResponse, ResumePosition};

/// `GetEventsResponse.resume`'s field number.
const RESUME_FIELD: u32 = 2000;

/// An event and, once some stream has needed them, its encoded bytes.
#[derive(Debug, Default)]
pub struct SharedEvent {
    event: Box<GetEventsResponse>,
    encoded: OnceLock<Bytes>,
    /// The relay's resume positions, set once when the event leaves the
    /// merge, after `encoded` was made: kept apart, and appended on the
    /// wire (protobuf concatenates fields), encoded as each stream sends.
    resume: OnceLock<Vec<ResumePosition>>,
}

impl SharedEvent {
    pub fn new(event: GetEventsResponse) -> Self {
        Self::from_box(Box::new(event))
    }

    /// Without moving the event out of its allocation.
    pub fn from_box(event: Box<GetEventsResponse>) -> Self {
        SharedEvent { event, encoded: OnceLock::new(), resume: OnceLock::new() }
    }

    /// With its encoding already made (as read off the wire): `encoded`
    /// must be the event's encoding, without resume positions.
    pub fn with_encoded(event: Box<GetEventsResponse>, encoded: Bytes) -> Self {
        SharedEvent { event, encoded: OnceLock::from(encoded), resume: OnceLock::new() }
    }

    pub fn event(&self) -> &GetEventsResponse {
        &self.event
    }

    /// The protobuf encoding, computed on first use and then shared.
    pub fn encoded(&self) -> &Bytes {
        self.encoded.get_or_init(|| Bytes::from(self.event.encode_to_vec()))
    }

    /// Sets the event's resume positions (`GetEventsResponse.resume`),
    /// once; a second call changes nothing.
    pub fn set_resume(&self, positions: Vec<ResumePosition>) {
        let _ = self.resume.set(positions);
    }

    /// The resume positions set by [`Self::set_resume`].
    pub fn resume(&self) -> &[ResumePosition] {
        self.resume.get().map_or(&[], Vec::as_slice)
    }

    /// The bytes it is sent as: its encoding and its resume positions.
    pub fn wire_len(&self) -> usize {
        self.encoded().len() + self.resume_len()
    }

    fn resume_len(&self) -> usize {
        prost::encoding::message::encoded_len_repeated(RESUME_FIELD, self.resume())
    }

    fn encode_resume(&self, buf: &mut impl BufMut) {
        for p in self.resume() {
            prost::encoding::message::encode(RESUME_FIELD, p, buf);
        }
    }

    /// The event as sent: with its resume positions.
    pub fn to_event(&self) -> GetEventsResponse {
        let mut event = (*self.event).clone();
        event.resume = self.resume().to_vec();
        event
    }

    pub fn into_event(self) -> GetEventsResponse {
        let mut event = *self.event;
        if let Some(positions) = self.resume.into_inner() {
            event.resume = positions;
        }
        event
    }
}

/// One message of a `GetEvents` stream: an event shared with other streams,
/// or one of this stream's own (history, a field-filtered copy, a loss
/// notice).
#[derive(Debug, Clone)]
pub enum OutEvent {
    Shared(Arc<SharedEvent>),
    Own(Box<GetEventsResponse>),
}

impl Default for OutEvent {
    fn default() -> Self {
        OutEvent::Own(Box::default())
    }
}

impl From<GetEventsResponse> for OutEvent {
    fn from(event: GetEventsResponse) -> Self {
        OutEvent::Own(Box::new(event))
    }
}

impl From<Arc<SharedEvent>> for OutEvent {
    fn from(event: Arc<SharedEvent>) -> Self {
        OutEvent::Shared(event)
    }
}

impl OutEvent {
    pub fn event(&self) -> &GetEventsResponse {
        match self {
            OutEvent::Shared(s) => s.event(),
            OutEvent::Own(e) => e,
        }
    }

    pub fn into_event(self) -> GetEventsResponse {
        match self {
            OutEvent::Shared(s) => Arc::try_unwrap(s).map_or_else(|s| s.to_event(), SharedEvent::into_event),
            OutEvent::Own(e) => *e,
        }
    }

    /// This stream's own copy, to modify.
    fn own_mut(&mut self) -> &mut GetEventsResponse {
        if let OutEvent::Shared(s) = self {
            *self = OutEvent::Own(Box::new(s.to_event()));
        }
        match self {
            OutEvent::Own(e) => e,
            OutEvent::Shared(_) => unreachable!("made own above"),
        }
    }
}

impl Message for OutEvent {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            OutEvent::Shared(s) => {
                buf.put_slice(s.encoded());
                s.encode_resume(buf);
            }
            OutEvent::Own(e) => e.encode_raw(buf),
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        self.own_mut().merge_field(tag, wire_type, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        match self {
            OutEvent::Shared(s) => s.wire_len(),
            OutEvent::Own(e) => e.encoded_len(),
        }
    }

    fn clear(&mut self) {
        *self = OutEvent::default();
    }
}

generated! {
    /// `tetragon.FineGuidanceSensors`' server, with `GetEvents` streaming
    /// [`OutEvent`]s (wire-identical to `GetEventsResponse`).
    mod generated {
        include!(concat!(env!("OUT_DIR"), "/shared/tetragon.rs"));
    }
}
pub use generated::fine_guidance_sensors_server;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_exec as exec;

    #[test]
    fn shared_and_own_encode_as_the_event_itself() {
        let e = exec("/bin/true");
        let shared = OutEvent::from(Arc::new(SharedEvent::new(e.clone())));
        let own = OutEvent::from(e.clone());
        assert_eq!(shared.encode_to_vec(), e.encode_to_vec());
        assert_eq!(own.encode_to_vec(), e.encode_to_vec());
        assert_eq!(shared.encoded_len(), e.encoded_len());
        let decoded = OutEvent::decode(e.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.event(), &e);
        assert_eq!(shared.into_event(), e);
    }

    #[test]
    fn resume_positions_set_after_encoding_go_out_with_the_event() {
        let e = exec("/bin/true");
        let shared = Arc::new(SharedEvent::new(e.clone()));
        let _ = shared.encoded();
        let positions = vec![ResumePosition { source: 7, seq: 9, done_through: 8 }];
        shared.set_resume(positions.clone());
        shared.set_resume(vec![]);
        let mut expected = e.clone();
        expected.resume = positions.clone();
        let out = OutEvent::from(shared.clone());
        assert_eq!(out.encode_to_vec(), expected.encode_to_vec(), "the first positions, appended");
        assert_eq!(out.encoded_len(), expected.encoded_len());
        assert_eq!(GetEventsResponse::decode(out.encode_to_vec().as_slice()).unwrap(), expected);
        assert_eq!(shared.event(), &e, "filters see the event without positions");
        assert_eq!(shared.to_event(), expected);
        assert_eq!(out.into_event(), expected);
        let json = serde_json::to_string(&expected).unwrap();
        assert!(!json.contains("resume"), "JSON keeps Tetragon's shape: {json}");
    }

    #[test]
    fn decoding_into_a_shared_event_makes_an_own_copy() {
        let shared_event = Arc::new(SharedEvent::new(exec("/a")));
        let mut out = OutEvent::Shared(shared_event.clone());
        out.merge(exec("/b").encode_to_vec().as_slice()).unwrap();
        assert!(matches!(out, OutEvent::Own(_)));
        assert_eq!(out.event(), &exec("/b"), "fields merged over the copy: the later binary wins");
        assert_eq!(shared_event.event(), &exec("/a"), "the shared event is untouched");
    }
}
