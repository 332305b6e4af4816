//! FastCGI 1.0 responder transport: turns records on a connection into a
//! complete [`Request`] (params + stdin), hands it to a [`Handler`], and writes
//! the [`Response`] back. It knows nothing about authentication.
//!
//! Spec: <https://fastcgi-archives.github.io/FastCGI_Specification.html>
//! (FastCGI 1.0, 29 April 1996), Responder role only (§6.2).
//! What nginx actually sends and accepts is summarised in
//! `nginx-auth-protocols.md` §4.3–4.4: one request at a time per connection,
//! request id 1, and in `auth_request` subrequests a non-zero `CONTENT_LENGTH`
//! with an *empty* STDIN.
//!
//! * [`record`]: bytes ↔ records and name-value pairs, no I/O.
//! * [`conn`]: the per-connection state machine over `AsyncRead + AsyncWrite`.

pub mod conn;
pub mod record;

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::time::Duration;

/// CGI parameters of one request, in arrival order. Names and values are raw
/// bytes: nginx passes header values through unchanged, and the params parser
/// (not this transport) decides what is valid text.
///
/// A name may occur more than once (a `fastcgi_param` duplicating one from
/// `fastcgi_params`); [`Params::get`] returns the first, [`Params::count`] lets the
/// caller notice and log duplicates.
///
/// `Debug` prints names and value *lengths* only: values hold passwords.
#[derive(Default, Clone)]
pub struct Params {
    /// All names and values back to back; for parsed params this is the PARAMS
    /// stream itself, so parsing copies nothing.
    buf: Vec<u8>,
    entries: Vec<Entry>,
}

#[derive(Clone)]
struct Entry {
    name: Range<usize>,
    value: Range<usize>,
}

/// Why a complete PARAMS stream was refused.
#[derive(Debug)]
pub enum ParamsError {
    /// The stream does not decode as name-value pairs.
    Malformed(record::RecordError),
    /// More pairs than the configured limit.
    TooMany,
}

impl Params {
    /// Value of the first occurrence of `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
    }

    /// How many times `name` occurred.
    pub fn count(&self, name: &str) -> usize {
        self.iter().filter(|(n, _)| *n == name.as_bytes()).count()
    }

    /// All pairs in arrival order, duplicates included.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries
            .iter()
            .map(|e| (&self.buf[e.name.clone()], &self.buf[e.value.clone()]))
    }

    /// Number of pairs, duplicates included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Builds params from owned pairs, for tests and the `auth test` CLI.
    pub fn from_pairs(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Self {
        let mut p = Params::default();
        for (name, value) in pairs {
            let n0 = p.buf.len();
            p.buf.extend_from_slice(&name);
            let v0 = p.buf.len();
            p.buf.extend_from_slice(&value);
            p.entries.push(Entry {
                name: n0..v0,
                value: v0..p.buf.len(),
            });
        }
        p
    }

    /// Parses a complete, concatenated PARAMS stream, keeping `stream` as the
    /// backing buffer.
    pub fn parse(stream: Vec<u8>, max_count: usize) -> Result<Self, ParamsError> {
        let mut entries = Vec::new();
        let mut pos = 0;
        while let Some((range, next)) =
            record::next_pair(&stream, pos).map_err(ParamsError::Malformed)?
        {
            if entries.len() >= max_count {
                return Err(ParamsError::TooMany);
            }
            entries.push(Entry {
                name: range.name,
                value: range.value,
            });
            pos = next;
        }
        Ok(Params {
            buf: stream,
            entries,
        })
    }
}

/// Shows `NAME: <N bytes>` so that a stray `{:?}` cannot leak a password.
impl fmt::Debug for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .map(|(n, v)| (String::from_utf8_lossy(n), Redacted(v.len()))),
            )
            .finish()
    }
}

/// Stands in for secret bytes in `Debug` output.
struct Redacted(usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0)
    }
}

/// One complete responder request: every PARAMS pair and the whole STDIN.
pub struct Request {
    /// The CGI environment.
    pub params: Params,
    /// The request body. Empty for `auth_http` and for every `auth_request`
    /// subrequest, whatever `CONTENT_LENGTH` says.
    pub stdin: Vec<u8>,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("params", &self.params)
            .field("stdin", &Redacted(self.stdin.len()))
            .finish()
    }
}

/// What the handler gives back: the CGI stdout bytes (headers + blank line
/// [+ body]) and the app status for END_REQUEST.
///
/// `stdout` must not be empty: nginx treats an empty STDOUT stream as
/// "upstream prematurely closed FastCGI stdout" (502).
pub struct Response {
    /// CGI output: `Name: value` lines, a blank line, then an optional body.
    pub stdout: Vec<u8>,
    /// `appStatus` of END_REQUEST, like a CGI exit status; nginx ignores it.
    pub app_status: u32,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The stdout of a mail login success carries Auth-Pass.
        f.debug_struct("Response")
            .field("stdout", &Redacted(self.stdout.len()))
            .field("app_status", &self.app_status)
            .finish()
    }
}

/// Answers requests. One handler is shared by every connection.
///
/// Contract: `handle` MUST always produce a response (errors become a CGI
/// response, e.g. `Status: 500 …`), MUST NOT block the async runtime (run
/// blocking backends and password hashing in `spawn_blocking`), and SHOULD
/// bound its own run time: the transport puts no timeout on it.
pub trait Handler: Send + Sync + 'static {
    /// Produces the response for one complete request.
    fn handle(&self, req: Request) -> impl Future<Output = Response> + Send;
}

/// Resource limits of the transport. Exceeding one closes the offending
/// connection only; see [`conn`] for what the peer is told.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Upper bound on the concatenated PARAMS stream of one request. nginx
    /// refuses to send more than 65535 bytes of params, so 64 KiB never
    /// rejects a real nginx request.
    pub max_params_bytes: usize,
    /// Upper bound on the number of name-value pairs of one request.
    pub max_params_count: usize,
    /// Upper bound on the STDIN of one request; auth requests have no body.
    pub max_stdin_bytes: usize,
    /// A request must be read completely within this time of its BEGIN_REQUEST
    /// (and any single record within this time of its first byte); a new
    /// connection must send its first record within it; it also bounds each
    /// write. Stops slow or silent clients from holding connection slots.
    pub read_timeout: Duration,
    /// How long a kept connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// Connections served at once; more are accepted and closed at once.
    /// Also reported as `FCGI_MAX_CONNS` / `FCGI_MAX_REQS` in GET_VALUES.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_params_bytes: 65536,
            max_params_count: 512,
            max_stdin_bytes: 65536,
            read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_connections: 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_lookup_keeps_first_and_counts_duplicates() {
        let p = Params::from_pairs(vec![
            (b"A".to_vec(), b"1".to_vec()),
            (b"B".to_vec(), b"".to_vec()),
            (b"A".to_vec(), b"2".to_vec()),
        ]);
        assert_eq!(p.get("A"), Some(&b"1"[..]));
        assert_eq!(p.get("B"), Some(&b""[..]));
        assert_eq!(p.get("C"), None);
        assert_eq!(p.count("A"), 2);
        assert_eq!(p.count("C"), 0);
        assert_eq!(p.len(), 3);
        assert!(!p.is_empty());
        let order: Vec<_> = p.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
        assert_eq!(order[2], (b"A".to_vec(), b"2".to_vec()));
        assert!(Params::default().is_empty());
    }

    #[test]
    fn params_parse_uses_stream_and_enforces_count() {
        let mut s = Vec::new();
        record::encode_pair(&mut s, b"HTTP_AUTH_USER", b"alice").unwrap();
        record::encode_pair(&mut s, b"HTTP_AUTH_PASS", b"hunter2").unwrap();
        let p = Params::parse(s.clone(), 2).unwrap();
        assert_eq!(p.get("HTTP_AUTH_PASS"), Some(&b"hunter2"[..]));
        assert!(matches!(Params::parse(s, 1), Err(ParamsError::TooMany)));
        assert!(matches!(
            Params::parse(vec![3, 3, b'a'], 10),
            Err(ParamsError::Malformed(_))
        ));
        assert!(Params::parse(Vec::new(), 0).unwrap().is_empty());
    }

    #[test]
    fn debug_output_hides_values() {
        let p = Params::from_pairs(vec![(b"HTTP_AUTH_PASS".to_vec(), b"hunter2".to_vec())]);
        let req = Request {
            params: p,
            stdin: b"body-secret".to_vec(),
        };
        let shown = format!("{req:?}");
        assert!(shown.contains("HTTP_AUTH_PASS"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("body-secret"), "{shown}");
        let resp = Response {
            stdout: b"Auth-Pass: hunter2\r\n\r\n".to_vec(),
            app_status: 0,
        };
        assert!(!format!("{resp:?}").contains("hunter2"));
    }
}
