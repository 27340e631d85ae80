//! The ttrpc wire format between containerd and a shim: frames of a 10-byte header (payload
//! length and stream id, big-endian u32 each, then a type and a flags byte) and a protobuf
//! payload. A request frame carries a `Request` (service, method, the method's message), a
//! response frame a `Response` (a gRPC status and the reply message). Frames of other types
//! (streaming data) pass through the proxy untouched.
use std::io::{self, Read, Write};

use prost::Message;

const HEADER_LEN: usize = 10;
/// ttrpc itself refuses messages over 4 MiB; a little headroom, and never an unbounded read.
const MAX_PAYLOAD: usize = 8 << 20;

pub const TYPE_REQUEST: u8 = 1;
pub const TYPE_RESPONSE: u8 = 2;

/// One ttrpc frame as read from (and written back to) a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub stream_id: u32,
    pub kind: u8,
    pub flags: u8,
    pub payload: Vec<u8>,
}

/// Reads one frame; None at a clean end of the connection (between frames).
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut header = [0u8; HEADER_LEN];
    match r.read_exact(&mut header[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut header[1..])?;
    let len = u32::from_be_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_PAYLOAD {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("ttrpc frame of {len} bytes")));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some(Frame {
        stream_id: u32::from_be_bytes(header[4..8].try_into().expect("4 bytes")),
        kind: header[8],
        flags: header[9],
        payload,
    }))
}

/// Writes one frame with a single write, so frames from several threads never interleave
/// (callers hold the connection's writer lock).
pub fn write_frame(w: &mut impl Write, frame: &Frame) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(HEADER_LEN + frame.payload.len());
    bytes.extend_from_slice(&(frame.payload.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&frame.stream_id.to_be_bytes());
    bytes.push(frame.kind);
    bytes.push(frame.flags);
    bytes.extend_from_slice(&frame.payload);
    w.write_all(&bytes)
}

/// ttrpc's request envelope (every field, so it re-encodes without loss).
#[derive(Clone, PartialEq, Message)]
pub struct Request {
    #[prost(string, tag = "1")]
    pub service: String,
    #[prost(string, tag = "2")]
    pub method: String,
    #[prost(bytes = "vec", tag = "3")]
    pub payload: Vec<u8>,
    #[prost(int64, tag = "4")]
    pub timeout_nano: i64,
    #[prost(message, repeated, tag = "5")]
    pub metadata: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// ttrpc's response envelope.
#[derive(Clone, PartialEq, Message)]
pub struct Response {
    #[prost(message, optional, tag = "1")]
    pub status: Option<Status>,
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
}

/// google.rpc.Status without its details (the proxy reads codes and writes its own errors).
#[derive(Clone, PartialEq, Message)]
pub struct Status {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// gRPC status codes the proxy answers with.
pub const CODE_UNKNOWN: i32 = 2;
pub const CODE_INVALID_ARGUMENT: i32 = 3;

impl Response {
    /// Whether the call succeeded (no status, or code OK).
    pub fn is_ok(&self) -> bool {
        !matches!(&self.status, Some(s) if s.code != 0)
    }

    /// The response frame that fails request `stream_id` with `message`.
    pub fn error_frame(stream_id: u32, code: i32, message: String) -> Frame {
        let response = Response { status: Some(Status { code, message }), payload: Vec::new() };
        Frame { stream_id, kind: TYPE_RESPONSE, flags: 0, payload: response.encode_to_vec() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_end_cleanly() {
        let frames = [
            Frame { stream_id: 1, kind: TYPE_REQUEST, flags: 0, payload: b"abc".to_vec() },
            Frame { stream_id: 3, kind: 3, flags: 1, payload: Vec::new() },
        ];
        let mut bytes = Vec::new();
        for f in &frames {
            write_frame(&mut bytes, f).unwrap();
        }
        assert_eq!(&bytes[..10], &[0, 0, 0, 3, 0, 0, 0, 1, 1, 0]);
        let mut r = &bytes[..];
        assert_eq!(read_frame(&mut r).unwrap().as_ref(), Some(&frames[0]));
        assert_eq!(read_frame(&mut r).unwrap().as_ref(), Some(&frames[1]));
        assert_eq!(read_frame(&mut r).unwrap(), None);
    }

    #[test]
    fn a_cut_frame_or_a_huge_length_is_an_error_not_a_hang_or_an_allocation() {
        let mut r: &[u8] = &[0, 0, 0, 5, 0, 0, 0, 1, 1, 0, b'a'];
        assert_eq!(read_frame(&mut r).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let mut r: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 1, 0];
        assert_eq!(read_frame(&mut r).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn error_frames_carry_the_code_and_message() {
        let frame = Response::error_frame(7, CODE_INVALID_ARGUMENT, "flox: bad".into());
        assert_eq!((frame.stream_id, frame.kind), (7, TYPE_RESPONSE));
        let response = Response::decode(&frame.payload[..]).unwrap();
        assert!(!response.is_ok());
        assert_eq!(response.status.unwrap().message, "flox: bad");
        assert!(Response::default().is_ok());
    }
}
