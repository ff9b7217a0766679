//! The frame format as a libp2p request-response codec.

use std::io;
use std::marker::PhantomData;

use futures::{AsyncRead, AsyncWrite};
use libp2p::StreamProtocol;
use libp2p::request_response::Codec;

use crate::frame::{self, FrameError};
use crate::wire::WireMessage;

/// A request-response codec that reads and writes one frame per request and one
/// per response, with each type's own size limit and validation.
///
/// libp2p wants `io::Error`; a rejected frame comes back as one of kind
/// `InvalidData` whose inner error is the [`FrameError`], so callers can still
/// tell an oversized frame from a bad field
/// (`err.get_ref().and_then(|e| e.downcast_ref::<FrameError>())`).
pub struct ShardCodec<Req, Resp> {
    _types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> ShardCodec<Req, Resp> {
    /// A codec for requests of type `Req` answered by `Resp`.
    pub fn new() -> Self {
        ShardCodec {
            _types: PhantomData,
        }
    }
}

impl<Req, Resp> Default for ShardCodec<Req, Resp> {
    fn default() -> Self {
        Self::new()
    }
}

impl<Req, Resp> Clone for ShardCodec<Req, Resp> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

fn to_io(err: FrameError) -> io::Error {
    match err {
        FrameError::Io(e) => e,
        FrameError::Truncated { .. } => io::Error::new(io::ErrorKind::UnexpectedEof, err),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<Req, Resp> Codec for ShardCodec<Req, Resp>
where
    Req: WireMessage + Send + 'static,
    Resp: WireMessage + Send + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        frame::read(io).await.map_err(to_io)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        frame::read(io).await.map_err(to_io)
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Req) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        frame::write(io, &req).await.map_err(to_io)
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        frame::write(io, &res).await.map_err(to_io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;
    use crate::protocol::CLAIM_PROTOCOL;
    use futures::executor::block_on;

    #[test]
    fn requests_and_responses_cross_a_stream() {
        let mut codec = ShardCodec::<pb::ClaimRequest, pb::Ack>::new();
        let cid = crate::ContentId::digest(b"work").to_bytes();
        let req = pb::ClaimRequest {
            work_cid: cid.clone(),
            model_cid: cid,
        };
        let mut wire = futures::io::Cursor::new(Vec::new());
        block_on(codec.write_request(&CLAIM_PROTOCOL, &mut wire, req.clone())).unwrap();
        wire.set_position(0);
        let got = block_on(codec.read_request(&CLAIM_PROTOCOL, &mut wire)).unwrap();
        assert_eq!(got, req);
    }

    #[test]
    fn a_bad_frame_surfaces_as_invalid_data_carrying_the_frame_error() {
        let mut codec = ShardCodec::<pb::ClaimRequest, pb::Ack>::new();
        // A valid frame whose work_cid is not a multihash.
        let bytes = [4u8, 0x0a, 0x02, 0xab, 0xcd];
        let mut wire = futures::io::Cursor::new(bytes.to_vec());
        let err = block_on(codec.read_request(&CLAIM_PROTOCOL, &mut wire)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let inner = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<FrameError>())
            .unwrap();
        assert_eq!(inner.validation().unwrap().field, "work_cid");
    }
}
