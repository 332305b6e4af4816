//! FastCGI 1.0 record layer, without I/O: record headers, the typed bodies a
//! responder reads and writes, and name-value pairs.
//!
//! Spec: <https://fastcgi-archives.github.io/FastCGI_Specification.html>, §3.3
//! (records), §3.4 (name-value pairs), §4 (management records), §5 (application
//! records), §8 (constants).
//!
//! Everything here works on byte slices so that it can be unit-tested and fuzzed
//! without sockets. Two promises hold for any input, hostile or not:
//!
//! * nothing panics, and
//! * nothing is allocated because of a length read from the wire. [`decode`]
//!   borrows the content from the caller's buffer and [`next_pair`] only returns
//!   ranges into it, so a pair that claims 2 GiB costs a comparison, not memory.

use std::ops::Range;

/// `FCGI_VERSION_1`, the only version that exists (§8).
pub const VERSION_1: u8 = 1;
/// Size of a record header (§3.3).
pub const HEADER_LEN: usize = 8;
/// Largest content a single record can carry: `contentLength` is a u16 (§3.3).
pub const MAX_CONTENT_LEN: usize = u16::MAX as usize;
/// Largest record on the wire: header, full content and the largest padding.
pub const MAX_RECORD_LEN: usize = HEADER_LEN + MAX_CONTENT_LEN + u8::MAX as usize;
/// `FCGI_NULL_REQUEST_ID`: management records use request id 0 (§3.3).
pub const NULL_REQUEST_ID: u16 = 0;
/// `FCGI_KEEP_CONN`, bit 0 of the BEGIN_REQUEST flags (§5.1).
pub const KEEP_CONN: u8 = 1;
/// Largest length a name-value pair can encode: 31 bits (§3.4).
pub const MAX_PAIR_PART_LEN: usize = 0x7FFF_FFFF;

/// Record type, the second byte of a header (§8, "Values for type component").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordType {
    /// `FCGI_BEGIN_REQUEST` (1): starts a request, body [`BeginRequest`] (§5.1).
    BeginRequest,
    /// `FCGI_ABORT_REQUEST` (2): the web server gives up on a request (§5.4).
    AbortRequest,
    /// `FCGI_END_REQUEST` (3): the application finished a request (§5.5).
    EndRequest,
    /// `FCGI_PARAMS` (4): name-value pair stream, the CGI environment (§5.2).
    Params,
    /// `FCGI_STDIN` (5): request body stream (§5.3).
    Stdin,
    /// `FCGI_STDOUT` (6): response stream (§5.3).
    Stdout,
    /// `FCGI_STDERR` (7): error stream; nginx logs it (§5.3).
    Stderr,
    /// `FCGI_DATA` (8): extra stream of the Filter role, unused by a responder (§5.3).
    Data,
    /// `FCGI_GET_VALUES` (9): management query about the application (§4.1).
    GetValues,
    /// `FCGI_GET_VALUES_RESULT` (10): answer to [`RecordType::GetValues`] (§4.1).
    GetValuesResult,
    /// `FCGI_UNKNOWN_TYPE` (11): answer to a management type we do not know (§4.2).
    UnknownType,
    /// Any other value, kept so that it can be echoed in UNKNOWN_TYPE.
    Other(u8),
}

impl From<u8> for RecordType {
    fn from(v: u8) -> Self {
        match v {
            1 => Self::BeginRequest,
            2 => Self::AbortRequest,
            3 => Self::EndRequest,
            4 => Self::Params,
            5 => Self::Stdin,
            6 => Self::Stdout,
            7 => Self::Stderr,
            8 => Self::Data,
            9 => Self::GetValues,
            10 => Self::GetValuesResult,
            11 => Self::UnknownType,
            other => Self::Other(other),
        }
    }
}

impl From<RecordType> for u8 {
    fn from(t: RecordType) -> u8 {
        match t {
            RecordType::BeginRequest => 1,
            RecordType::AbortRequest => 2,
            RecordType::EndRequest => 3,
            RecordType::Params => 4,
            RecordType::Stdin => 5,
            RecordType::Stdout => 6,
            RecordType::Stderr => 7,
            RecordType::Data => 8,
            RecordType::GetValues => 9,
            RecordType::GetValuesResult => 10,
            RecordType::UnknownType => 11,
            RecordType::Other(v) => v,
        }
    }
}

/// Role requested in BEGIN_REQUEST (§6). nginx only ever asks for
/// [`Role::Responder`]; its `auth_request` is *not* the FastCGI Authorizer role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `FCGI_RESPONDER` (1), §6.2: the only role we serve.
    Responder,
    /// `FCGI_AUTHORIZER` (2), §6.3.
    Authorizer,
    /// `FCGI_FILTER` (3), §6.4.
    Filter,
    /// Anything else.
    Other(u16),
}

impl From<u16> for Role {
    fn from(v: u16) -> Self {
        match v {
            1 => Self::Responder,
            2 => Self::Authorizer,
            3 => Self::Filter,
            other => Self::Other(other),
        }
    }
}

impl From<Role> for u16 {
    fn from(r: Role) -> u16 {
        match r {
            Role::Responder => 1,
            Role::Authorizer => 2,
            Role::Filter => 3,
            Role::Other(v) => v,
        }
    }
}

/// `protocolStatus` of END_REQUEST (§5.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolStatus {
    /// `FCGI_REQUEST_COMPLETE` (0): normal end.
    RequestComplete,
    /// `FCGI_CANT_MPX_CONN` (1): a second request on a connection we do not multiplex.
    CantMpxConn,
    /// `FCGI_OVERLOADED` (2): out of a resource; we use it for requests over a limit.
    Overloaded,
    /// `FCGI_UNKNOWN_ROLE` (3): the role in BEGIN_REQUEST is not served.
    UnknownRole,
}

impl From<ProtocolStatus> for u8 {
    fn from(s: ProtocolStatus) -> u8 {
        match s {
            ProtocolStatus::RequestComplete => 0,
            ProtocolStatus::CantMpxConn => 1,
            ProtocolStatus::Overloaded => 2,
            ProtocolStatus::UnknownRole => 3,
        }
    }
}

/// Why bytes from the peer could not be understood. Every variant is the
/// peer's fault except [`RecordError::PairTooLong`] and
/// [`RecordError::ContentTooLong`], which guard our own encoders.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The header's version byte is not 1; the framing cannot be trusted after it.
    #[error("unsupported FastCGI version {0}")]
    UnsupportedVersion(u8),
    /// A BEGIN_REQUEST body that is not the 8 bytes §5.1 defines.
    #[error("BEGIN_REQUEST body is {0} bytes, expected 8")]
    BadBeginRequest(usize),
    /// A name-value pair whose lengths run past the end of its stream (§3.4).
    #[error("name-value pair truncated at byte {offset}")]
    TruncatedPair {
        /// Offset of the pair's first length byte in the stream.
        offset: usize,
    },
    /// A name or value longer than the 31 bits a length can express.
    #[error("name-value part of {0} bytes is too long to encode")]
    PairTooLong(usize),
    /// A single-record body longer than 65535 bytes.
    #[error("record content of {0} bytes exceeds 65535")]
    ContentTooLong(usize),
}

/// A decoded record header (§3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Protocol version; only [`VERSION_1`] is valid.
    pub version: u8,
    /// What the content is.
    pub record_type: RecordType,
    /// Request the record belongs to; 0 for management records.
    pub request_id: u16,
    /// Bytes of content following the header.
    pub content_length: u16,
    /// Bytes of padding following the content, to be skipped.
    pub padding_length: u8,
}

impl Header {
    /// Decodes a header. Any 8 bytes are a header; validity is the caller's call.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Header {
        Header {
            version: b[0],
            record_type: RecordType::from(b[1]),
            request_id: u16::from_be_bytes([b[2], b[3]]),
            content_length: u16::from_be_bytes([b[4], b[5]]),
            padding_length: b[6],
        }
    }

    /// Encodes a header; the reserved byte is 0.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let id = self.request_id.to_be_bytes();
        let len = self.content_length.to_be_bytes();
        [
            self.version,
            self.record_type.into(),
            id[0],
            id[1],
            len[0],
            len[1],
            self.padding_length,
            0,
        ]
    }

    /// Total bytes the record occupies on the wire, header included.
    pub fn record_len(&self) -> usize {
        HEADER_LEN + usize::from(self.content_length) + usize::from(self.padding_length)
    }
}

/// One record, borrowing its content from the buffer it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// What the content is.
    pub record_type: RecordType,
    /// Request the record belongs to; 0 for management records.
    pub request_id: u16,
    /// The content, padding removed.
    pub content: &'a [u8],
}

/// Decodes the first record in `buf`.
///
/// Returns `Ok(None)` while the record is incomplete (read more and call again),
/// `Ok(Some((record, consumed)))` once it is whole, where `consumed` includes the
/// padding. The version is checked as soon as the header is there, so a peer
/// that is not speaking FastCGI 1 is rejected without waiting for its "content".
pub fn decode(buf: &[u8]) -> Result<Option<(Record<'_>, usize)>, RecordError> {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let header = Header::decode(head);
    if header.version != VERSION_1 {
        return Err(RecordError::UnsupportedVersion(header.version));
    }
    let total = header.record_len();
    if buf.len() < total {
        return Ok(None);
    }
    let content_end = HEADER_LEN + usize::from(header.content_length);
    Ok(Some((
        Record {
            record_type: header.record_type,
            request_id: header.request_id,
            content: &buf[HEADER_LEN..content_end],
        },
        total,
    )))
}

/// Body of BEGIN_REQUEST (§5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeginRequest {
    /// Role the web server wants us to play.
    pub role: Role,
    /// Flag bits; only [`KEEP_CONN`] is defined.
    pub flags: u8,
}

impl BeginRequest {
    /// Decodes the 8-byte body; any other length is malformed.
    pub fn decode(content: &[u8]) -> Result<BeginRequest, RecordError> {
        match content {
            [r0, r1, flags, _, _, _, _, _] => Ok(BeginRequest {
                role: Role::from(u16::from_be_bytes([*r0, *r1])),
                flags: *flags,
            }),
            _ => Err(RecordError::BadBeginRequest(content.len())),
        }
    }

    /// Whether the web server keeps the connection open after END_REQUEST.
    pub fn keep_conn(&self) -> bool {
        self.flags & KEEP_CONN != 0
    }
}

/// Padding that brings `len` to a multiple of 8, as §3.3 recommends senders do.
fn padding_for(len: usize) -> u8 {
    // (8 - len % 8) % 8 is always < 8, so the cast cannot truncate.
    ((8 - len % 8) % 8) as u8
}

/// Appends one record holding `content`, padded to a multiple of 8.
fn encode_record(
    out: &mut Vec<u8>,
    record_type: RecordType,
    request_id: u16,
    content: &[u8],
) -> Result<(), RecordError> {
    let content_length =
        u16::try_from(content.len()).map_err(|_| RecordError::ContentTooLong(content.len()))?;
    let padding_length = padding_for(content.len());
    let header = Header {
        version: VERSION_1,
        record_type,
        request_id,
        content_length,
        padding_length,
    };
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(content);
    out.resize(out.len() + usize::from(padding_length), 0);
    Ok(())
}

/// Appends `data` as a stream of records of `record_type` (§5.3), each at most
/// 65535 bytes of content. Appends nothing for empty `data`; the terminating
/// empty record is [`encode_stream_end`], so callers can send a stream in pieces.
pub fn encode_stream(out: &mut Vec<u8>, record_type: RecordType, request_id: u16, data: &[u8]) {
    out.reserve(data.len() + (data.len() / MAX_CONTENT_LEN + 1) * (HEADER_LEN + 8));
    for chunk in data.chunks(MAX_CONTENT_LEN) {
        // A chunk is at most MAX_CONTENT_LEN bytes, so this cannot fail.
        let _ = encode_record(out, record_type, request_id, chunk);
    }
}

/// Appends the empty record that ends a stream (§3.3, "stream records").
pub fn encode_stream_end(out: &mut Vec<u8>, record_type: RecordType, request_id: u16) {
    let _ = encode_record(out, record_type, request_id, &[]);
}

/// Appends BEGIN_REQUEST (§5.1). A responder never sends it; it exists for
/// tests and fuzzing seeds.
pub fn encode_begin_request(out: &mut Vec<u8>, request_id: u16, role: Role, flags: u8) {
    let r = u16::from(role).to_be_bytes();
    let body = [r[0], r[1], flags, 0, 0, 0, 0, 0];
    let _ = encode_record(out, RecordType::BeginRequest, request_id, &body);
}

/// Appends END_REQUEST (§5.5).
pub fn encode_end_request(
    out: &mut Vec<u8>,
    request_id: u16,
    app_status: u32,
    protocol_status: ProtocolStatus,
) {
    let a = app_status.to_be_bytes();
    let body = [a[0], a[1], a[2], a[3], protocol_status.into(), 0, 0, 0];
    let _ = encode_record(out, RecordType::EndRequest, request_id, &body);
}

/// Appends UNKNOWN_TYPE for a management record of type `unknown` (§4.2).
pub fn encode_unknown_type(out: &mut Vec<u8>, unknown: RecordType) {
    let body = [unknown.into(), 0, 0, 0, 0, 0, 0, 0];
    let _ = encode_record(out, RecordType::UnknownType, NULL_REQUEST_ID, &body);
}

/// Appends GET_VALUES_RESULT (§4.1) carrying `pairs`, which must fit one record.
pub fn encode_get_values_result(
    out: &mut Vec<u8>,
    pairs: &[(&[u8], &[u8])],
) -> Result<(), RecordError> {
    let mut body = Vec::new();
    for (name, value) in pairs {
        encode_pair(&mut body, name, value)?;
    }
    encode_record(out, RecordType::GetValuesResult, NULL_REQUEST_ID, &body)
}

/// Appends one name-value pair (§3.4), choosing 1- or 4-byte lengths.
pub fn encode_pair(out: &mut Vec<u8>, name: &[u8], value: &[u8]) -> Result<(), RecordError> {
    encode_len(out, name.len())?;
    encode_len(out, value.len())?;
    out.extend_from_slice(name);
    out.extend_from_slice(value);
    Ok(())
}

fn encode_len(out: &mut Vec<u8>, len: usize) -> Result<(), RecordError> {
    if len < 0x80 {
        // Checked just above: fits in 7 bits.
        out.push(len as u8);
        return Ok(());
    }
    let l = u32::try_from(len)
        .ok()
        .filter(|&l| l as usize <= MAX_PAIR_PART_LEN)
        .ok_or(RecordError::PairTooLong(len))?;
    out.extend_from_slice(&(l | 0x8000_0000).to_be_bytes());
    Ok(())
}

/// Reads a 1- or 4-byte length at `pos`; `None` if the bytes are not there.
fn decode_len(buf: &[u8], pos: usize) -> Option<(usize, usize)> {
    let first = *buf.get(pos)?;
    if first & 0x80 == 0 {
        return Some((usize::from(first), pos + 1));
    }
    let b = buf.get(pos..pos.checked_add(4)?)?;
    let l = u32::from_be_bytes([b[0] & 0x7F, b[1], b[2], b[3]]);
    // 31 bits always fit a usize on the 32- and 64-bit targets Rust supports.
    Some((l as usize, pos + 4))
}

/// Where one name-value pair sits in a stream buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairRange {
    /// Byte range of the name.
    pub name: Range<usize>,
    /// Byte range of the value.
    pub value: Range<usize>,
}

/// Decodes the pair starting at `pos` in a *complete* stream `buf` (all PARAMS
/// content concatenated; a pair may straddle records, §5.2).
///
/// Returns `Ok(None)` at the end of the buffer and the pair plus the position of
/// the next one otherwise. Lengths that run past the end are an error: the
/// stream has ended, so the missing bytes will never come.
pub fn next_pair(buf: &[u8], pos: usize) -> Result<Option<(PairRange, usize)>, RecordError> {
    if pos >= buf.len() {
        return Ok(None);
    }
    let truncated = RecordError::TruncatedPair { offset: pos };
    let (name_len, p) = decode_len(buf, pos).ok_or_else(|| truncated.clone())?;
    let (value_len, p) = decode_len(buf, p).ok_or_else(|| truncated.clone())?;
    // checked_add: on 32-bit targets two 31-bit lengths could overflow.
    let name_end = p.checked_add(name_len).ok_or_else(|| truncated.clone())?;
    let value_end = name_end
        .checked_add(value_len)
        .ok_or_else(|| truncated.clone())?;
    if value_end > buf.len() {
        return Err(truncated);
    }
    Ok(Some((
        PairRange {
            name: p..name_end,
            value: name_end..value_end,
        },
        value_end,
    )))
}

/// Iterator over the pairs of a complete stream, as slices. Stops after the
/// first error.
#[derive(Debug, Clone)]
pub struct Pairs<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

/// Iterates over the name-value pairs of a complete stream buffer.
pub fn pairs(buf: &[u8]) -> Pairs<'_> {
    Pairs {
        buf,
        pos: 0,
        failed: false,
    }
}

impl<'a> Iterator for Pairs<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match next_pair(self.buf, self.pos) {
            Ok(Some((r, next))) => {
                self.pos = next;
                Some(Ok((&self.buf[r.name], &self.buf[r.value])))
            }
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record built by hand, not with our encoder, with explicit padding.
    fn raw(version: u8, ty: u8, id: u16, content: &[u8], padding: u8) -> Vec<u8> {
        let mut v = vec![
            version,
            ty,
            (id >> 8) as u8,
            id as u8,
            (content.len() >> 8) as u8,
            content.len() as u8,
            padding,
            0,
        ];
        v.extend_from_slice(content);
        v.extend(std::iter::repeat_n(0xAA, usize::from(padding)));
        v
    }

    type OwnedPairs = Vec<(Vec<u8>, Vec<u8>)>;

    fn collect(buf: &[u8]) -> Result<OwnedPairs, RecordError> {
        pairs(buf)
            .map(|r| r.map(|(n, v)| (n.to_vec(), v.to_vec())))
            .collect()
    }

    #[test]
    fn header_round_trip() {
        let h = Header {
            version: 1,
            record_type: RecordType::Params,
            request_id: 0x1234,
            content_length: 0xBEEF,
            padding_length: 7,
        };
        let b = h.encode();
        assert_eq!(b, [1, 4, 0x12, 0x34, 0xBE, 0xEF, 7, 0]);
        assert_eq!(Header::decode(&b), h);
        assert_eq!(h.record_len(), 8 + 0xBEEF + 7);
    }

    #[test]
    fn record_types_round_trip_through_u8() {
        for v in 0..=255u8 {
            assert_eq!(u8::from(RecordType::from(v)), v);
        }
        assert_eq!(RecordType::from(11), RecordType::UnknownType);
        assert_eq!(RecordType::from(12), RecordType::Other(12));
    }

    #[test]
    fn decode_needs_the_whole_record_and_reports_consumed() {
        let rec = raw(1, 5, 1, b"hello", 3);
        for cut in 0..rec.len() {
            assert_eq!(decode(&rec[..cut]), Ok(None), "prefix of {cut} bytes");
        }
        let mut two = rec.clone();
        two.extend_from_slice(&raw(1, 5, 1, b"", 0));
        let (r, used) = decode(&two).unwrap().unwrap();
        assert_eq!(used, rec.len());
        assert_eq!(r.record_type, RecordType::Stdin);
        assert_eq!(r.request_id, 1);
        assert_eq!(r.content, b"hello");
        let (r2, used2) = decode(&two[used..]).unwrap().unwrap();
        assert_eq!((r2.content, used2), (&b""[..], 8));
    }

    #[test]
    fn every_padding_length_is_skipped() {
        for pad in 0..=255u8 {
            let mut buf = raw(1, 4, 9, b"abc", pad);
            buf.extend_from_slice(&raw(1, 4, 9, b"", 0));
            let (r, used) = decode(&buf).unwrap().unwrap();
            assert_eq!(r.content, b"abc");
            assert_eq!(used, 8 + 3 + usize::from(pad));
            let (end, _) = decode(&buf[used..]).unwrap().unwrap();
            assert!(end.content.is_empty());
        }
    }

    #[test]
    fn version_other_than_one_is_rejected_from_the_header_alone() {
        let rec = raw(2, 1, 1, &[0, 1, 1, 0, 0, 0, 0, 0], 0);
        assert_eq!(decode(&rec[..8]), Err(RecordError::UnsupportedVersion(2)));
        assert_eq!(decode(&rec), Err(RecordError::UnsupportedVersion(2)));
        assert_eq!(decode(&[0u8; 8]), Err(RecordError::UnsupportedVersion(0)));
        // Seven bytes are not yet a header, so no verdict.
        assert_eq!(decode(&rec[..7]), Ok(None));
    }

    #[test]
    fn begin_request_body() {
        let b = BeginRequest::decode(&[0, 1, 1, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(b.role, Role::Responder);
        assert!(b.keep_conn());
        let b = BeginRequest::decode(&[0, 2, 0, 9, 9, 9, 9, 9]).unwrap();
        assert_eq!(b.role, Role::Authorizer);
        assert!(!b.keep_conn());
        assert_eq!(
            BeginRequest::decode(&[0, 1, 1]),
            Err(RecordError::BadBeginRequest(3))
        );
        assert_eq!(
            BeginRequest::decode(&[0; 9]),
            Err(RecordError::BadBeginRequest(9))
        );
    }

    #[test]
    fn one_byte_and_four_byte_lengths() {
        // name 3 bytes (1-byte length), value 300 bytes (4-byte length).
        let value = vec![b'v'; 300];
        let mut buf = vec![3, 0x80, 0x00, 0x01, 0x2C];
        buf.extend_from_slice(b"KEY");
        buf.extend_from_slice(&value);
        // name 200 bytes (4-byte), value 0 bytes.
        let name = vec![b'N'; 200];
        buf.extend_from_slice(&[0x80, 0, 0, 200, 0]);
        buf.extend_from_slice(&name);
        let got = collect(&buf).unwrap();
        assert_eq!(got, vec![(b"KEY".to_vec(), value), (name, vec![])]);

        // Our encoder picks the same encodings.
        let mut enc = Vec::new();
        encode_pair(&mut enc, b"KEY", &[b'v'; 300]).unwrap();
        encode_pair(&mut enc, &[b'N'; 200], b"").unwrap();
        assert_eq!(enc, buf);
        // 127 is the last 1-byte length, 128 the first 4-byte one.
        let mut enc = Vec::new();
        encode_pair(&mut enc, &[b'a'; 127], &[b'b'; 128]).unwrap();
        assert_eq!(&enc[..5], &[127, 0x80, 0, 0, 128]);
    }

    #[test]
    fn truncated_pairs_are_errors() {
        // Lengths say 5+5, only 4 bytes follow.
        assert_eq!(
            collect(&[5, 5, b'a', b'b', b'c', b'd']),
            Err(RecordError::TruncatedPair { offset: 0 })
        );
        // A 4-byte length cut after two bytes.
        assert_eq!(
            collect(&[1, 1, b'a', b'b', 0x80, 0]),
            Err(RecordError::TruncatedPair { offset: 4 })
        );
        // Name length present, value length missing.
        assert_eq!(collect(&[1]), Err(RecordError::TruncatedPair { offset: 0 }));
    }

    #[test]
    fn huge_claimed_length_fails_without_allocating() {
        // 0xFFFFFFFF encodes 2^31 - 1 for the name; nothing is allocated from it,
        // the parser only compares it with what the buffer holds.
        let buf = [0xFF, 0xFF, 0xFF, 0xFF, 0x01, b'x', b'y'];
        assert_eq!(
            next_pair(&buf, 0),
            Err(RecordError::TruncatedPair { offset: 0 })
        );
        let buf = [0x01, 0xFF, 0xFF, 0xFF, 0xFF, b'x'];
        assert_eq!(
            next_pair(&buf, 0),
            Err(RecordError::TruncatedPair { offset: 0 })
        );
    }

    #[test]
    fn params_split_across_records_with_a_straddling_pair() {
        let mut stream = Vec::new();
        encode_pair(&mut stream, b"REQUEST_METHOD", b"GET").unwrap();
        encode_pair(&mut stream, b"HTTP_AUTH_USER", &[b'u'; 200]).unwrap();
        encode_pair(&mut stream, b"HTTP_AUTH_PASS", b"secret").unwrap();
        // Cut in the middle of the second pair's 4-byte value length, and again
        // in the middle of its value, so one pair spans three records.
        let cut1 = 1 + 1 + 14 + 3 + 1 + 2;
        let cut2 = cut1 + 100;
        let mut wire = Vec::new();
        for (i, part) in [&stream[..cut1], &stream[cut1..cut2], &stream[cut2..]]
            .iter()
            .enumerate()
        {
            wire.extend_from_slice(&raw(1, 4, 1, part, (i * 3) as u8));
        }
        wire.extend_from_slice(&raw(1, 4, 1, b"", 0));

        let mut joined = Vec::new();
        let mut pos = 0;
        loop {
            let (r, used) = decode(&wire[pos..]).unwrap().unwrap();
            pos += used;
            assert_eq!(r.record_type, RecordType::Params);
            if r.content.is_empty() {
                break;
            }
            joined.extend_from_slice(r.content);
        }
        assert_eq!(pos, wire.len());
        let got = collect(&joined).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[1], (b"HTTP_AUTH_USER".to_vec(), vec![b'u'; 200]));
        assert_eq!(got[2].1, b"secret");

        // Parsing one record's content on its own fails instead of guessing.
        assert!(collect(&stream[..cut1]).is_err());
    }

    #[test]
    fn stream_encoding_chunks_and_pads() {
        let data = vec![7u8; MAX_CONTENT_LEN + 10];
        let mut out = Vec::new();
        encode_stream(&mut out, RecordType::Stdout, 1, &data);
        encode_stream_end(&mut out, RecordType::Stdout, 1);
        let mut pos = 0;
        let mut lens = Vec::new();
        while pos < out.len() {
            let h = Header::decode(out[pos..].first_chunk().unwrap());
            assert_eq!(
                (h.content_length as usize + h.padding_length as usize) % 8,
                0
            );
            let (r, used) = decode(&out[pos..]).unwrap().unwrap();
            lens.push(r.content.len());
            pos += used;
        }
        assert_eq!(lens, vec![MAX_CONTENT_LEN, 10, 0]);

        let mut out = Vec::new();
        encode_stream(&mut out, RecordType::Stdout, 1, b"");
        assert!(out.is_empty(), "empty data writes no record");
    }

    #[test]
    fn management_and_end_request_bytes() {
        let mut out = Vec::new();
        encode_end_request(&mut out, 0x0102, 0x0A0B0C0D, ProtocolStatus::UnknownRole);
        assert_eq!(
            out,
            [1, 3, 1, 2, 0, 8, 0, 0, 0x0A, 0x0B, 0x0C, 0x0D, 3, 0, 0, 0]
        );
        let mut out = Vec::new();
        encode_unknown_type(&mut out, RecordType::Other(200));
        assert_eq!(out, [1, 11, 0, 0, 0, 8, 0, 0, 200, 0, 0, 0, 0, 0, 0, 0]);
        let mut out = Vec::new();
        encode_get_values_result(&mut out, &[(b"FCGI_MPXS_CONNS", b"0")]).unwrap();
        let (r, used) = decode(&out).unwrap().unwrap();
        assert_eq!(used, out.len());
        assert_eq!(r.record_type, RecordType::GetValuesResult);
        assert_eq!(r.request_id, 0);
        assert_eq!(
            collect(r.content).unwrap(),
            vec![(b"FCGI_MPXS_CONNS".to_vec(), b"0".to_vec())]
        );
    }

    #[test]
    fn oversized_single_record_is_refused() {
        let mut out = Vec::new();
        let big = vec![(&[b'n'; 40_000][..], &[b'v'; 40_000][..])];
        assert_eq!(
            encode_get_values_result(&mut out, &big),
            Err(RecordError::ContentTooLong(80_008))
        );
        assert!(out.is_empty());
    }

    /// Cheap stand-in for the fuzz target: arbitrary bytes never panic the
    /// record or pair decoders.
    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if next() % 2 == 0 && !buf.is_empty() {
                buf[0] = 1; // often a valid version, to reach deeper paths
            }
            let _ = decode(&buf);
            let _ = BeginRequest::decode(&buf);
            for p in pairs(&buf) {
                if p.is_err() {
                    break;
                }
            }
        }
    }
}
