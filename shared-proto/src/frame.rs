//! `[unsigned varint length][protobuf bytes]` framing.
//!
//! The length prefix is an unsigned LEB128 varint as in the multiformats
//! `unsigned-varint` spec: at most 9 bytes and minimally encoded. Readers compare
//! the announced length with the message type's [`WireMessage::MAX_LEN`] *before*
//! allocating, so a peer cannot make us reserve memory by lying about a length.
//! A decoded message is [validated](crate::Validate) before it is handed out.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use thiserror::Error;

use crate::validate::ValidationError;
use crate::wire::WireMessage;

/// Longest varint the spec allows (63 bits of payload).
pub const MAX_VARINT_LEN: usize = 9;

/// Why a frame was rejected.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The announced length is above the limit of the expected message type.
    #[error("{message} frame of {len} bytes exceeds its {max}-byte limit")]
    Oversized {
        /// Expected message type.
        message: &'static str,
        /// Announced (or, when writing, actual) length.
        len: u64,
        /// The type's limit.
        max: usize,
    },
    /// The input ended inside the length prefix or the body.
    #[error("frame truncated: {needed} more bytes expected")]
    Truncated {
        /// How many more bytes a complete frame needs (at least).
        needed: usize,
    },
    /// The length prefix is not a valid unsigned varint.
    #[error("invalid length prefix: {0}")]
    Varint(VarintError),
    /// Bytes follow a complete frame where none were expected.
    #[error("{0} unexpected bytes after the frame")]
    TrailingBytes(usize),
    /// The body is not a valid protobuf encoding of the expected type.
    #[error("{message} does not decode: {reason}")]
    Decode {
        /// Expected message type.
        message: &'static str,
        /// What prost reported.
        reason: prost::DecodeError,
    },
    /// The message decoded but breaks a constraint of the protocol.
    #[error("{message} is invalid: {error}")]
    Invalid {
        /// Message type.
        message: &'static str,
        /// The first field found in breach.
        error: ValidationError,
    },
    /// The underlying stream failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<VarintError> for FrameError {
    fn from(e: VarintError) -> Self {
        FrameError::Varint(e)
    }
}

impl FrameError {
    /// The validation error, when that is what rejected the frame.
    pub fn validation(&self) -> Option<&ValidationError> {
        match self {
            FrameError::Invalid { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Why a varint length prefix was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum VarintError {
    /// More than [`MAX_VARINT_LEN`] bytes.
    #[error("longer than {MAX_VARINT_LEN} bytes")]
    TooLong,
    /// A trailing zero byte: the same number has a shorter encoding.
    #[error("not minimally encoded")]
    NotMinimal,
}

/// Appends the varint encoding of `value` to `out`.
pub fn encode_varint(mut value: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Reads a length prefix from the start of `buf`.
///
/// Returns `Ok(None)` when `buf` ends inside the prefix, otherwise the value and
/// the number of prefix bytes.
pub fn decode_length_prefix(buf: &[u8]) -> Result<Option<(u64, usize)>, VarintError> {
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().enumerate() {
        if i >= MAX_VARINT_LEN {
            return Err(VarintError::TooLong);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if byte == 0 && i > 0 {
                return Err(VarintError::NotMinimal);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= MAX_VARINT_LEN {
        return Err(VarintError::TooLong);
    }
    Ok(None)
}

fn check_len<T: WireMessage>(len: u64) -> Result<usize, FrameError> {
    match usize::try_from(len) {
        Ok(n) if n <= T::MAX_LEN => Ok(n),
        _ => Err(FrameError::Oversized {
            message: T::NAME,
            len,
            max: T::MAX_LEN,
        }),
    }
}

fn decode_body<T: WireMessage>(body: &[u8]) -> Result<T, FrameError> {
    let msg = T::decode(body).map_err(|reason| FrameError::Decode {
        message: T::NAME,
        reason,
    })?;
    msg.validate().map_err(|error| FrameError::Invalid {
        message: T::NAME,
        error,
    })?;
    Ok(msg)
}

/// Validates `msg` and encodes it as one frame.
///
/// Refuses to produce a frame that a conforming reader would reject.
pub fn encode<T: WireMessage>(msg: &T) -> Result<Vec<u8>, FrameError> {
    msg.validate().map_err(|error| FrameError::Invalid {
        message: T::NAME,
        error,
    })?;
    let len = msg.encoded_len();
    check_len::<T>(len as u64)?;
    let mut out = Vec::with_capacity(len + MAX_VARINT_LEN);
    encode_varint(len as u64, &mut out);
    msg.encode(&mut out)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(out)
}

/// Decodes the frame at the start of `buf`; returns the message and the number of
/// bytes it used. Bytes after the frame are left alone.
pub fn decode_prefix<T: WireMessage>(buf: &[u8]) -> Result<(T, usize), FrameError> {
    let (len, prefix) = decode_length_prefix(buf)?.ok_or(FrameError::Truncated { needed: 1 })?;
    let len = check_len::<T>(len)?;
    let body = &buf[prefix..];
    if body.len() < len {
        return Err(FrameError::Truncated {
            needed: len - body.len(),
        });
    }
    let msg = decode_body::<T>(&body[..len])?;
    Ok((msg, prefix + len))
}

/// Decodes `buf`, which must hold exactly one frame (a gossipsub payload, say).
pub fn decode<T: WireMessage>(buf: &[u8]) -> Result<T, FrameError> {
    let (msg, used) = decode_prefix::<T>(buf)?;
    match buf.len() - used {
        0 => Ok(msg),
        extra => Err(FrameError::TrailingBytes(extra)),
    }
}

/// Reads one frame from a stream.
pub async fn read<T, R>(io: &mut R) -> Result<T, FrameError>
where
    T: WireMessage,
    R: AsyncRead + Unpin,
{
    let mut prefix = [0u8; MAX_VARINT_LEN];
    let mut filled = 0;
    let len = loop {
        if filled == MAX_VARINT_LEN {
            return Err(VarintError::TooLong.into());
        }
        let n = io.read(&mut prefix[filled..=filled]).await?;
        if n == 0 {
            return Err(FrameError::Truncated { needed: 1 });
        }
        filled += 1;
        if let Some((len, _)) = decode_length_prefix(&prefix[..filled])? {
            break len;
        }
    };
    let len = check_len::<T>(len)?;
    let mut body = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = io.read(&mut body[got..]).await?;
        if n == 0 {
            return Err(FrameError::Truncated { needed: len - got });
        }
        got += n;
    }
    decode_body::<T>(&body)
}

/// Writes one frame to a stream and flushes it.
pub async fn write<T, W>(io: &mut W, msg: &T) -> Result<(), FrameError>
where
    T: WireMessage,
    W: AsyncWrite + Unpin,
{
    let bytes = encode(msg)?;
    io.write_all(&bytes).await?;
    io.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    #[test]
    fn varint_round_trips_at_the_edges() {
        for value in [0u64, 1, 127, 128, 300, 16_383, 16_384, (1 << 63) - 1] {
            let mut buf = Vec::new();
            encode_varint(value, &mut buf);
            assert_eq!(
                decode_length_prefix(&buf),
                Ok(Some((value, buf.len()))),
                "{value}"
            );
        }
    }

    #[test]
    fn varint_rejects_overlong_and_non_minimal() {
        assert_eq!(decode_length_prefix(&[0xff; 9]), Err(VarintError::TooLong));
        assert_eq!(decode_length_prefix(&[0xff; 12]), Err(VarintError::TooLong));
        assert_eq!(
            decode_length_prefix(&[0x80, 0x00]),
            Err(VarintError::NotMinimal)
        );
        assert_eq!(decode_length_prefix(&[0x80, 0x80]), Ok(None));
        assert_eq!(decode_length_prefix(&[]), Ok(None));
    }

    #[test]
    fn oversized_length_is_rejected_before_the_body_arrives() {
        // A 5-byte claim of 2 GiB followed by nothing: must fail on the length,
        // not wait for or allocate the body.
        let mut buf = Vec::new();
        encode_varint(2 << 30, &mut buf);
        let err = decode_prefix::<pb::HandshakeMessage>(&buf).unwrap_err();
        assert!(
            matches!(err, FrameError::Oversized { len, max: 1024, .. } if len == 2 << 30),
            "{err}"
        );
    }

    #[test]
    fn one_byte_over_the_limit_is_rejected_and_the_limit_itself_accepted() {
        let at_limit = pb::ProtocolListRequest {};
        let mut buf = Vec::new();
        encode_varint(1025, &mut buf);
        buf.extend(std::iter::repeat_n(0u8, 1025));
        assert!(matches!(
            decode::<pb::ProtocolListRequest>(&buf),
            Err(FrameError::Oversized { len: 1025, .. })
        ));
        // An empty message is a zero-length frame.
        assert_eq!(encode(&at_limit).unwrap(), vec![0]);
        assert_eq!(decode::<pb::ProtocolListRequest>(&[0]).unwrap(), at_limit);
    }

    #[test]
    fn truncated_frames_say_how_much_is_missing() {
        let err = decode::<pb::Ack>(&[5, 8, 1]).unwrap_err();
        assert!(matches!(err, FrameError::Truncated { needed: 3 }), "{err}");
        let err = decode::<pb::Ack>(&[]).unwrap_err();
        assert!(matches!(err, FrameError::Truncated { .. }), "{err}");
    }

    #[test]
    fn trailing_bytes_are_rejected_by_decode_but_left_by_decode_prefix() {
        let ok = pb::Ack {
            ok: true,
            ..Default::default()
        };
        let mut buf = encode(&ok).unwrap();
        let frame_len = buf.len();
        buf.extend([1, 2, 3]);
        assert!(matches!(
            decode::<pb::Ack>(&buf),
            Err(FrameError::TrailingBytes(3))
        ));
        let (msg, used) = decode_prefix::<pb::Ack>(&buf).unwrap();
        assert_eq!((msg, used), (ok, frame_len));
    }

    #[test]
    fn encode_refuses_messages_a_reader_would_reject() {
        let too_big = pb::ProtocolList {
            protocols: vec!["/shard/1.0.0/x".repeat(8); 40],
        };
        assert!(matches!(
            encode(&too_big),
            Err(FrameError::Oversized { max: 1024, .. })
        ));
    }

    #[test]
    fn stream_read_and_write_round_trip() {
        let ack = pb::Ack {
            ok: false,
            detail: "no".into(),
            errors: vec![],
        };
        let mut sink = futures::io::Cursor::new(Vec::new());
        futures::executor::block_on(write(&mut sink, &ack)).unwrap();
        let bytes = sink.into_inner();
        let mut two = bytes.clone();
        two.extend(&bytes);
        let mut source = futures::io::Cursor::new(two);
        for _ in 0..2 {
            let got: pb::Ack = futures::executor::block_on(read(&mut source)).unwrap();
            assert_eq!(got, ack);
        }
        let end = futures::executor::block_on(read::<pb::Ack, _>(&mut source));
        assert!(matches!(end, Err(FrameError::Truncated { .. })));
    }

    #[test]
    fn stream_read_rejects_oversized_length_without_reading_on() {
        let mut buf = Vec::new();
        encode_varint(9000, &mut buf);
        buf.extend([0u8; 16]);
        let mut source = futures::io::Cursor::new(buf);
        let err =
            futures::executor::block_on(read::<pb::DraftRequest, _>(&mut source)).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Oversized {
                    len: 9000,
                    max: 8192,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(source.position(), 2, "only the prefix was consumed");
    }
}
