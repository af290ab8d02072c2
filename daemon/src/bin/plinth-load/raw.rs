//! Unary gRPC calls whose answer is handed back as the bytes it arrived in, undecoded: a
//! timed call then ends when the daemon's last byte is in, and decoding a large answer (ten
//! thousand images are 2–3 MB, and as much work for the client to decode whichever daemon
//! sent them) is left to the check that follows, untimed.

use std::marker::PhantomData;

use plinth_api::prost::Message;
use plinth_api::prost::bytes::Buf as _;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::Bytes;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Encodes requests of type `M` as prost does; keeps answers as bytes.
struct RawCodec<M>(PhantomData<fn() -> M>);

impl<M: Message + 'static> Codec for RawCodec<M> {
    type Encode = M;
    type Decode = Bytes;
    type Encoder = RequestEncoder<M>;
    type Decoder = AnswerBytes;

    fn encoder(&mut self) -> Self::Encoder {
        RequestEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        AnswerBytes
    }
}

struct RequestEncoder<M>(PhantomData<fn() -> M>);

impl<M: Message> Encoder for RequestEncoder<M> {
    type Item = M;
    type Error = Status;

    fn encode(&mut self, item: M, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the request: {e}")))
    }
}

struct AnswerBytes;

impl Decoder for AnswerBytes {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Calls the unary method at `path` (`/<package>.<Service>/<Method>`) with `request`; the
/// answer's bytes, however large.
///
/// # Errors
/// The call's status.
pub(crate) async fn unary<M: Message + Send + Sync + 'static>(
    channel: Channel,
    path: &'static str,
    request: Request<M>,
) -> Result<Response<Bytes>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(usize::MAX);
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(format!("the connection is not ready: {e}")))?;
    grpc.unary(
        request,
        PathAndQuery::from_static(path),
        RawCodec(PhantomData),
    )
    .await
}

/// Decodes an answer kept as bytes.
///
/// # Errors
/// The bytes are not an `M`: the text of prost's error.
pub(crate) fn decode<M: Message + Default>(bytes: Bytes) -> Result<M, String> {
    M::decode(bytes).map_err(|e| format!("the answer does not decode: {e}"))
}
