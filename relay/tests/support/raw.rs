//! Talking to the relay's ingest below the generated client: messages sent
//! as given bytes, already encoded or deliberately broken.

use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType};

/// An already-encoded message, sent as is.
#[derive(Debug, Clone, Default)]
pub struct Preencoded(pub Bytes);

impl Message for Preencoded {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Only ever sent.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }
    fn encoded_len(&self) -> usize {
        self.0.len()
    }
    fn clear(&mut self) {
        self.0.clear();
    }
}

/// The ingest stream with messages sent as given bytes.
pub async fn raw_ingest(
    channel: tonic::transport::Channel,
    messages: tokio::sync::mpsc::Receiver<Preencoded>,
) -> Result<tonic::Streaming<proto::vigil::relay::v1::IngestReply>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = "/vigil.relay.v1.Ingest/Stream".parse().expect("path");
    let codec = tonic_prost::ProstCodec::<Preencoded, proto::vigil::relay::v1::IngestReply>::default();
    let request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(messages));
    Ok(grpc.streaming(request, path, codec).await?.into_inner())
}
