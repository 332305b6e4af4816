//! A FastCGI 1.0 *client* for tests, written from the spec
//! (<https://fastcgi-archives.github.io/FastCGI_Specification.html>) without
//! using `src/fastcgi`, so that a misreading shared by the server's encoder and
//! decoder cannot make a test pass.
//!
//! Builders return plain byte vectors so tests can concatenate, split and
//! corrupt them; [`header`] builds arbitrary (also invalid) headers.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

pub const BEGIN_REQUEST: u8 = 1;
pub const ABORT_REQUEST: u8 = 2;
pub const END_REQUEST: u8 = 3;
pub const PARAMS: u8 = 4;
pub const STDIN: u8 = 5;
pub const STDOUT: u8 = 6;
pub const STDERR: u8 = 7;
pub const DATA: u8 = 8;
pub const GET_VALUES: u8 = 9;
pub const GET_VALUES_RESULT: u8 = 10;
pub const UNKNOWN_TYPE: u8 = 11;

pub const RESPONDER: u16 = 1;
pub const AUTHORIZER: u16 = 2;
pub const FILTER: u16 = 3;

pub const KEEP_CONN: u8 = 1;

pub const REQUEST_COMPLETE: u8 = 0;
pub const CANT_MPX_CONN: u8 = 1;
pub const OVERLOADED: u8 = 2;
pub const UNKNOWN_ROLE: u8 = 3;

/// An 8-byte header with every field chosen by the caller.
pub fn header(version: u8, ty: u8, id: u16, content_len: u16, padding: u8) -> [u8; 8] {
    let [i0, i1] = id.to_be_bytes();
    let [l0, l1] = content_len.to_be_bytes();
    [version, ty, i0, i1, l0, l1, padding, 0]
}

/// A version-1 record with explicit padding (filled with 0xEE, which a
/// receiver must skip unread).
pub fn record_padded(ty: u8, id: u16, content: &[u8], padding: u8) -> Vec<u8> {
    let len = u16::try_from(content.len()).expect("record content over 65535");
    let mut v = header(1, ty, id, len, padding).to_vec();
    v.extend_from_slice(content);
    v.resize(v.len() + padding as usize, 0xEE);
    v
}

/// A version-1 record padded to a multiple of 8, as nginx sends them.
pub fn record(ty: u8, id: u16, content: &[u8]) -> Vec<u8> {
    let padding = ((8 - content.len() % 8) % 8) as u8;
    record_padded(ty, id, content, padding)
}

pub fn begin(id: u16, role: u16, flags: u8) -> Vec<u8> {
    let [r0, r1] = role.to_be_bytes();
    record(BEGIN_REQUEST, id, &[r0, r1, flags, 0, 0, 0, 0, 0])
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 128 {
        out.push(len as u8);
    } else {
        out.extend_from_slice(&(len as u32 | 0x8000_0000).to_be_bytes());
    }
}

/// Name-value pairs as one byte string (§3.4).
pub fn encode_pairs(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in pairs {
        push_len(&mut out, n.len());
        push_len(&mut out, v.len());
        out.extend_from_slice(n);
        out.extend_from_slice(v);
    }
    out
}

/// `data` as records of `ty` of at most `chunk` bytes each, then the empty
/// record that ends the stream.
pub fn stream(ty: u8, id: u16, data: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for part in data.chunks(chunk.max(1)) {
        out.extend(record(ty, id, part));
    }
    out.extend(record(ty, id, b""));
    out
}

/// All pairs in one PARAMS record plus the terminator, like nginx.
pub fn params(id: u16, pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    stream(PARAMS, id, &encode_pairs(pairs), 0xFFFF)
}

/// The params of a plain IMAP login as nginx's mail module sends them.
pub fn mail_pairs<'a>(user: &'a [u8], pass: &'a [u8], ip: &'a [u8]) -> Vec<(&'a [u8], &'a [u8])> {
    vec![
        (b"HTTP_AUTH_METHOD", b"plain"),
        (b"HTTP_AUTH_USER", user),
        (b"HTTP_AUTH_PASS", pass),
        (b"HTTP_AUTH_PROTOCOL", b"imap"),
        (b"HTTP_AUTH_LOGIN_ATTEMPT", b"1"),
        (b"HTTP_CLIENT_IP", ip),
    ]
}

/// A whole responder request: BEGIN, PARAMS, STDIN (data + terminator).
pub fn request(id: u16, flags: u8, pairs: &[(&[u8], &[u8])], stdin: &[u8]) -> Vec<u8> {
    let mut v = begin(id, RESPONDER, flags);
    v.extend(params(id, pairs));
    v.extend(stream(STDIN, id, stdin, 0xFFFF));
    v
}

pub fn abort(id: u16) -> Vec<u8> {
    record(ABORT_REQUEST, id, b"")
}

pub fn get_values(names: &[&str]) -> Vec<u8> {
    let pairs: Vec<(&[u8], &[u8])> = names.iter().map(|n| (n.as_bytes(), &b""[..])).collect();
    record(GET_VALUES, 0, &encode_pairs(&pairs))
}

/// One record as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub version: u8,
    pub ty: u8,
    pub id: u16,
    pub content: Vec<u8>,
}

/// Reads one record. `Ok(None)` on EOF before its first byte; an EOF inside a
/// record is `UnexpectedEof`.
pub async fn read_record<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Rec>> {
    let mut h = [0u8; 8];
    let n = r.read(&mut h[..1]).await?;
    if n == 0 {
        return Ok(None);
    }
    r.read_exact(&mut h[1..]).await?;
    let len = u16::from_be_bytes([h[4], h[5]]) as usize;
    let mut body = vec![0u8; len + h[6] as usize];
    r.read_exact(&mut body).await?;
    body.truncate(len);
    Ok(Some(Rec {
        version: h[0],
        ty: h[1],
        id: u16::from_be_bytes([h[2], h[3]]),
        content: body,
    }))
}

/// Like [`read_record`], but EOF is an error and it gives up after 5 s.
pub async fn expect_record<R: AsyncRead + Unpin>(r: &mut R) -> Rec {
    match tokio::time::timeout(Duration::from_secs(5), read_record(r)).await {
        Ok(Ok(Some(rec))) => rec,
        other => panic!("expected a record, got {other:?}"),
    }
}

/// `(appStatus, protocolStatus)` of an END_REQUEST body.
pub fn end_request_body(content: &[u8]) -> (u32, u8) {
    assert_eq!(content.len(), 8, "END_REQUEST body length");
    (
        u32::from_be_bytes([content[0], content[1], content[2], content[3]]),
        content[4],
    )
}

/// Everything the server sent for one request, up to END_REQUEST.
#[derive(Debug, Default)]
pub struct Reply {
    pub id: u16,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// STDOUT records seen, including the empty terminator.
    pub stdout_records: usize,
    pub app_status: u32,
    pub protocol_status: u8,
}

impl Reply {
    /// Value of a CGI header line in STDOUT.
    pub fn header(&self, name: &str) -> Option<String> {
        let text = String::from_utf8_lossy(&self.stdout);
        let head = text.split("\r\n\r\n").next()?;
        head.split("\r\n").find_map(|line| {
            let (n, v) = line.split_once(": ")?;
            (n == name).then(|| v.to_owned())
        })
    }

    /// STDOUT after the blank line.
    pub fn body(&self) -> &[u8] {
        let pos = self
            .stdout
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(self.stdout.len(), |p| p + 4);
        &self.stdout[pos..]
    }
}

/// Reads STDOUT/STDERR records up to END_REQUEST (5 s at most). Records for
/// other ids or of other types are a test failure.
pub async fn read_reply<R: AsyncRead + Unpin>(r: &mut R, id: u16) -> Reply {
    let mut reply = Reply {
        id,
        ..Reply::default()
    };
    loop {
        let rec = expect_record(r).await;
        assert_eq!(rec.version, 1, "server record version");
        assert_eq!(rec.id, id, "request id not echoed: {rec:?}");
        match rec.ty {
            STDOUT => {
                reply.stdout_records += 1;
                reply.stdout.extend_from_slice(&rec.content);
            }
            STDERR => reply.stderr.extend_from_slice(&rec.content),
            END_REQUEST => {
                (reply.app_status, reply.protocol_status) = end_request_body(&rec.content);
                return reply;
            }
            other => panic!("unexpected record type {other} in reply"),
        }
    }
}

/// [`read_reply`] over bytes already read whole, for blocking callers.
pub fn reply_from_bytes(mut bytes: &[u8], id: u16) -> Reply {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
        .block_on(read_reply(&mut bytes, id))
}

/// Name-value pairs of a complete stream; panics on malformed input.
pub fn decode_pairs(mut b: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    fn len(b: &mut &[u8]) -> usize {
        if b[0] < 128 {
            let l = b[0] as usize;
            *b = &b[1..];
            l
        } else {
            let l = u32::from_be_bytes([b[0] & 0x7F, b[1], b[2], b[3]]) as usize;
            *b = &b[4..];
            l
        }
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let nl = len(&mut b);
        let vl = len(&mut b);
        out.push((b[..nl].to_vec(), b[nl..nl + vl].to_vec()));
        b = &b[nl + vl..];
    }
    out
}

/// How a connection ended, as seen by [`read_until_closed`].
#[derive(Debug)]
pub struct Closed {
    /// Records received before the close.
    pub records: Vec<Rec>,
    /// Whether the end was a reset rather than a clean EOF.
    pub reset: bool,
}

/// Reads until the server closes the connection; panics if it has not within
/// `within`.
pub async fn read_until_closed<R: AsyncRead + Unpin>(r: &mut R, within: Duration) -> Closed {
    let fut = async {
        let mut records = Vec::new();
        loop {
            match read_record(r).await {
                Ok(Some(rec)) => records.push(rec),
                Ok(None) => {
                    return Closed {
                        records,
                        reset: false,
                    }
                }
                Err(_) => {
                    return Closed {
                        records,
                        reset: true,
                    }
                }
            }
        }
    };
    tokio::time::timeout(within, fut)
        .await
        .unwrap_or_else(|_| panic!("connection still open after {within:?}"))
}

/// One request with `pairs` over a new connection to the Unix socket
/// `sock` (blocking, 10 s at most), its reply.
pub fn exchange(sock: &std::path::Path, pairs: &[(&[u8], &[u8])]) -> Reply {
    use std::io::{Read as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(sock)
        .unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&request(1, 0, pairs, b"")).unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    reply_from_bytes(&reply, 1)
}
