//! One FastCGI connection: records in, [`Request`]s to the [`Handler`],
//! responses out. Requests on a connection are served one at a time
//! (`FCGI_MPXS_CONNS=0`), which is all nginx ever uses.
//!
//! Spec: <https://fastcgi-archives.github.io/FastCGI_Specification.html> §3.5
//! (closing connections), §4 (management records), §5 (application records),
//! §6.2 (Responder). nginx's side of it: `nginx-auth-protocols.md` §4.3–4.4.
//!
//! # What the peer sees
//!
//! | Input | Answer | Connection |
//! |---|---|---|
//! | BEGIN_REQUEST, role RESPONDER | the handler's STDOUT, empty STDOUT, END_REQUEST(appStatus, REQUEST_COMPLETE), in one write | closed iff KEEP_CONN was clear |
//! | BEGIN_REQUEST, other role | END_REQUEST(0, UNKNOWN_ROLE) | closed iff KEEP_CONN was clear, like any ended request |
//! | BEGIN_REQUEST for a new id while one is active | END_REQUEST(0, CANT_MPX_CONN) for the new id | kept; the active request continues |
//! | ABORT_REQUEST for the active id | END_REQUEST(0, REQUEST_COMPLETE), request dropped | closed iff KEEP_CONN was clear |
//! | GET_VALUES (id 0) | GET_VALUES_RESULT with the known names asked for | kept |
//! | other record on id 0 | UNKNOWN_TYPE | kept |
//! | record for an id that is not active, second empty STDIN, DATA, … | nothing (ignored) | kept |
//! | PARAMS or STDIN over [`Limits`], too many params | END_REQUEST(0, OVERLOADED) | closed |
//! | version ≠ 1, bad BEGIN body, malformed pairs, repeated BEGIN for the active id | nothing | closed |
//! | request not read within `read_timeout`, or nothing sent within `read_timeout` of connecting | nothing | closed |
//! | nothing sent within `idle_timeout` after a kept request | nothing | closed |
//! | EOF or reset at any point | nothing | dropped silently |
//!
//! Over-limit requests get END_REQUEST(OVERLOADED) rather than a CGI
//! `Status: 400` because §5.5 defines OVERLOADED for exactly this ("out of
//! some resource"), it needs no knowledge of HTTP here, and nginx (which never
//! sends more than 64 KiB of params) answers both with an error anyway.
//! Malformed input gets no answer: the framing can no longer be trusted.
//!
//! STDIN is read only up to its empty terminator record, never up to
//! `CONTENT_LENGTH`: in `auth_request` subrequests nginx passes the original
//! request's `CONTENT_LENGTH` but an empty body.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{timeout, timeout_at, Instant};

use super::record::{self, BeginRequest, ProtocolStatus, Record, RecordError, RecordType, Role};
use super::{Handler, Limits, Params, ParamsError, Request, Response};

/// Bytes asked from the socket per read. An nginx request (BEGIN + ~600 bytes
/// of params + STDIN end) arrives in one read.
const READ_CHUNK: usize = 16 * 1024;
/// Read buffers larger than this are shrunk back once empty, so one big
/// request does not pin memory for the life of a kept connection.
const SHRINK_ABOVE: usize = 4 * READ_CHUNK;
/// After our last record we half-close and read what the peer still sends for
/// at most this long / this many bytes. Closing with unread data makes TCP send
/// a reset, which can destroy the response before the peer reads it.
const LINGER_TIME: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 256 * 1024;

/// Why a connection was closed by us. None of the messages contain param or
/// stdin bytes (they hold passwords); they name limits, ids and record types.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnError {
    /// The socket failed (not a plain EOF or reset, which are not errors).
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The peer sent bytes that are not FastCGI 1.0.
    #[error("malformed input: {0}")]
    Malformed(#[from] RecordError),
    /// The peer sent BEGIN_REQUEST again for the request that is active.
    #[error("BEGIN_REQUEST repeated for active request {id}")]
    RepeatedBegin {
        /// The request id.
        id: u16,
    },
    /// PARAMS of one request exceeded [`Limits::max_params_bytes`].
    #[error("request {id}: PARAMS exceed {limit} bytes")]
    ParamsTooLarge {
        /// The request id.
        id: u16,
        /// The configured limit.
        limit: usize,
    },
    /// One request had more than [`Limits::max_params_count`] pairs.
    #[error("request {id}: more than {limit} params")]
    TooManyParams {
        /// The request id.
        id: u16,
        /// The configured limit.
        limit: usize,
    },
    /// STDIN of one request exceeded [`Limits::max_stdin_bytes`].
    #[error("request {id}: STDIN exceeds {limit} bytes")]
    StdinTooLarge {
        /// The request id.
        id: u16,
        /// The configured limit.
        limit: usize,
    },
    /// A request (or a record) was not complete within [`Limits::read_timeout`].
    #[error("request not received within {0:?}")]
    ReadTimeout(Duration),
    /// The peer did not take our output within [`Limits::read_timeout`].
    #[error("response not accepted within {0:?}")]
    WriteTimeout(Duration),
}

/// Serves requests on `io` until the peer closes, a request without
/// KEEP_CONN is answered, an error occurs, or shutdown is signalled.
///
/// `shutdown` turning `true` closes the connection at once if it is idle
/// between requests; a request already begun is read, handled and answered
/// first. A dropped sender means shutdown will never be signalled.
///
/// Returns `Ok` for every normal end (including EOF or reset by the peer and
/// the idle timeout) and `Err` for the cases the caller should log once.
pub async fn serve<IO, H>(
    io: IO,
    handler: &H,
    limits: &Limits,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ConnError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let mut conn = Conn {
        io,
        rbuf: Vec::with_capacity(READ_CHUNK),
        rpos: 0,
        out: Vec::new(),
        write_timeout: limits.read_timeout,
    };
    let mut session = Session::new(limits);
    // nginx connects only when it has a request to send, so a new connection
    // gets read_timeout, not idle_timeout, to start one: silent connects must
    // not hold connection slots for minutes.
    let mut idle_deadline = Instant::now() + limits.read_timeout;
    // Deadline for a partly received record while no request is active.
    let mut record_deadline: Option<Instant> = None;

    loop {
        let step = match record::decode(&conn.rbuf[conn.rpos..]) {
            Err(e) => return conn.fail(e.into()).await,
            Ok(Some((rec, used))) => {
                let step = session.on_record(rec, Instant::now(), &mut conn.out);
                conn.rpos += used;
                record_deadline = None;
                step
            }
            Ok(None) => {
                // Answers to management records go out before we block.
                if let Err(e) = conn.flush().await {
                    return quiet_if_disconnect(e);
                }
                let read = if session.active.is_none() && conn.buffered() == 0 {
                    tokio::select! {
                        biased;
                        _ = shutdown_signalled(&mut shutdown) => return Ok(()),
                        r = timeout_at(idle_deadline, conn.fill()) => match r {
                            Ok(r) => r,
                            Err(_) => {
                                log::debug!("fastcgi: closing connection idle for {:?}", limits.idle_timeout);
                                return Ok(());
                            }
                        },
                    }
                } else {
                    let deadline = session.deadline().unwrap_or_else(|| {
                        *record_deadline.get_or_insert_with(|| Instant::now() + limits.read_timeout)
                    });
                    match timeout_at(deadline, conn.fill()).await {
                        Ok(r) => r,
                        Err(_) => return Err(ConnError::ReadTimeout(limits.read_timeout)),
                    }
                };
                match read {
                    Ok(0) => {
                        if session.active.is_some() || conn.buffered() > 0 {
                            log::debug!("fastcgi: peer closed the connection mid-request");
                        }
                        return Ok(());
                    }
                    Ok(_) => continue,
                    Err(e) => return quiet_if_disconnect(ConnError::Io(e)),
                }
            }
        };

        match step {
            Ok(Step::Continue) => {
                if session.active.is_none() {
                    idle_deadline = Instant::now() + limits.idle_timeout;
                }
            }
            Ok(Step::Close) => {
                if let Err(e) = conn.flush().await {
                    return quiet_if_disconnect(e);
                }
                conn.linger().await;
                return Ok(());
            }
            Ok(Step::Dispatch { req, id, keep_conn }) => {
                let resp = handler.handle(req).await;
                encode_response(&mut conn.out, id, &resp);
                if let Err(e) = conn.flush().await {
                    return quiet_if_disconnect(e);
                }
                if !keep_conn || *shutdown.borrow() {
                    conn.linger().await;
                    return Ok(());
                }
                idle_deadline = Instant::now() + limits.idle_timeout;
            }
            Err(e) => return conn.fail(e).await,
        }
    }
}

/// Resolves once shutdown is signalled; never, if it no longer can be.
async fn shutdown_signalled(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|&down| down).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A peer that goes away is normal (nginx closes when its client does);
/// only other failures are worth a log line.
fn quiet_if_disconnect(e: ConnError) -> Result<(), ConnError> {
    match &e {
        ConnError::Io(io)
            if matches!(
                io.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            ) =>
        {
            log::debug!("fastcgi: peer went away: {e}");
            Ok(())
        }
        _ => Err(e),
    }
}

fn encode_response(out: &mut Vec<u8>, id: u16, resp: &Response) {
    record::encode_stream(out, RecordType::Stdout, id, &resp.stdout);
    record::encode_stream_end(out, RecordType::Stdout, id);
    record::encode_end_request(out, id, resp.app_status, ProtocolStatus::RequestComplete);
}

/// The socket plus its buffers. Reads go into `rbuf` and are decoded in place;
/// everything we send in one go is gathered in `out` and written once.
struct Conn<IO> {
    io: IO,
    rbuf: Vec<u8>,
    /// Start of the unconsumed bytes in `rbuf`.
    rpos: usize,
    out: Vec<u8>,
    write_timeout: Duration,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<IO> {
    fn buffered(&self) -> usize {
        self.rbuf.len() - self.rpos
    }

    /// Reads more bytes; `Ok(0)` is EOF. Cancel-safe (it is raced with timeouts).
    async fn fill(&mut self) -> io::Result<usize> {
        if self.rpos == self.rbuf.len() {
            // Consumed records held params and so passwords; do not leave
            // them around in a buffer that lives as long as the connection.
            self.rbuf.fill(0);
            self.rbuf.clear();
            if self.rbuf.capacity() > SHRINK_ABOVE {
                self.rbuf.shrink_to(READ_CHUNK);
            }
        } else if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
        }
        self.rpos = 0;
        // Never more than one record (≤ 65798 bytes) plus one chunk is held,
        // because we only read when the buffered bytes are not a whole record.
        self.rbuf.reserve(READ_CHUNK);
        self.io.read_buf(&mut self.rbuf).await
    }

    /// Writes and flushes everything in `out` with one `write_all`.
    async fn flush(&mut self) -> Result<(), ConnError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let Conn { io, out, .. } = self;
        let r = timeout(self.write_timeout, async {
            io.write_all(out).await?;
            io.flush().await
        })
        .await;
        // The response may carry Auth-Pass.
        self.out.fill(0);
        self.out.clear();
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ConnError::Io(e)),
            Err(_) => Err(ConnError::WriteTimeout(self.write_timeout)),
        }
    }

    /// Half-closes, then discards input briefly so that the close does not
    /// turn into a reset that eats our last records (see [`LINGER_TIME`]).
    async fn linger(&mut self) {
        let io = &mut self.io;
        let _ = timeout(LINGER_TIME, async {
            let _ = io.shutdown().await;
            let mut sink = [0u8; 4096];
            let mut total = 0;
            while total < LINGER_BYTES {
                match io.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        })
        .await;
    }

    /// Sends whatever answer is pending (OVERLOADED), closes, and returns `e`.
    async fn fail(&mut self, e: ConnError) -> Result<(), ConnError> {
        if !self.out.is_empty() && self.flush().await.is_ok() {
            self.linger().await;
        }
        Err(e)
    }
}

/// What the driver does after a record.
enum Step {
    /// Read on.
    Continue,
    /// Send what is pending and close.
    Close,
    /// A request is complete: run the handler and answer it.
    Dispatch {
        req: Request,
        id: u16,
        keep_conn: bool,
    },
}

/// The request being received, if any.
struct Active {
    id: u16,
    keep_conn: bool,
    deadline: Instant,
    /// PARAMS content so far; a pair may straddle records, so parse at the end.
    params_buf: Vec<u8>,
    /// Set once the empty PARAMS record arrived.
    params: Option<Params>,
    stdin: Vec<u8>,
    stdin_done: bool,
}

/// Protocol state of one connection, free of I/O: records in, bytes for the
/// peer appended to `out`, a [`Step`] back.
struct Session<'l> {
    limits: &'l Limits,
    active: Option<Active>,
}

impl<'l> Session<'l> {
    /// A connection's session before its first record.
    fn new(limits: &'l Limits) -> Self {
        Session {
            limits,
            active: None,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.active.as_ref().map(|a| a.deadline)
    }

    fn on_record(
        &mut self,
        rec: Record<'_>,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<Step, ConnError> {
        let id = rec.request_id;
        if id == record::NULL_REQUEST_ID {
            match rec.record_type {
                RecordType::GetValues => self.answer_get_values(rec.content, out)?,
                other => record::encode_unknown_type(out, other),
            }
            return Ok(Step::Continue);
        }

        if rec.record_type == RecordType::BeginRequest {
            return self.begin(id, rec.content, now, out);
        }

        let Some(active) = self.active.as_mut().filter(|a| a.id == id) else {
            // Late records of a finished request (fastcgi-client sends a second
            // empty STDIN) or of an id we refused: harmless, ignore.
            log::debug!(
                "fastcgi: ignoring {:?} record for inactive request {id}",
                rec.record_type
            );
            return Ok(Step::Continue);
        };

        match rec.record_type {
            RecordType::AbortRequest => {
                let keep_conn = active.keep_conn;
                self.active = None;
                record::encode_end_request(out, id, 0, ProtocolStatus::RequestComplete);
                return Ok(if keep_conn {
                    Step::Continue
                } else {
                    Step::Close
                });
            }
            RecordType::Params if active.params.is_none() => {
                if rec.content.is_empty() {
                    let stream = std::mem::take(&mut active.params_buf);
                    match Params::parse(stream, self.limits.max_params_count) {
                        Ok(p) => active.params = Some(p),
                        Err(ParamsError::Malformed(e)) => return Err(e.into()),
                        Err(ParamsError::TooMany) => {
                            let limit = self.limits.max_params_count;
                            return Err(
                                self.overloaded(out, ConnError::TooManyParams { id, limit })
                            );
                        }
                    }
                } else if active.params_buf.len() + rec.content.len() > self.limits.max_params_bytes
                {
                    let limit = self.limits.max_params_bytes;
                    return Err(self.overloaded(out, ConnError::ParamsTooLarge { id, limit }));
                } else {
                    active.params_buf.extend_from_slice(rec.content);
                }
            }
            // STDIN before the end of PARAMS is out of order but harmless, so it
            // is accepted; after its terminator, more STDIN is ignored.
            RecordType::Stdin if !active.stdin_done => {
                if rec.content.is_empty() {
                    active.stdin_done = true;
                } else if active.stdin.len() + rec.content.len() > self.limits.max_stdin_bytes {
                    let limit = self.limits.max_stdin_bytes;
                    return Err(self.overloaded(out, ConnError::StdinTooLarge { id, limit }));
                } else {
                    active.stdin.extend_from_slice(rec.content);
                }
            }
            other => {
                log::debug!("fastcgi: ignoring {other:?} record for request {id}");
            }
        }

        if active.stdin_done && active.params.is_some() {
            // Both checked just above; take() cannot miss.
            if let Some(a) = self.active.take() {
                return Ok(Step::Dispatch {
                    req: Request {
                        params: a.params.unwrap_or_default(),
                        stdin: a.stdin,
                    },
                    id: a.id,
                    keep_conn: a.keep_conn,
                });
            }
        }
        Ok(Step::Continue)
    }

    fn begin(
        &mut self,
        id: u16,
        content: &[u8],
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<Step, ConnError> {
        let begin = BeginRequest::decode(content)?;
        if let Some(active) = &self.active {
            if active.id == id {
                return Err(ConnError::RepeatedBegin { id });
            }
            record::encode_end_request(out, id, 0, ProtocolStatus::CantMpxConn);
            return Ok(Step::Continue);
        }
        if begin.role != Role::Responder {
            log::debug!("fastcgi: refusing role {:?} for request {id}", begin.role);
            record::encode_end_request(out, id, 0, ProtocolStatus::UnknownRole);
            return Ok(if begin.keep_conn() {
                Step::Continue
            } else {
                Step::Close
            });
        }
        self.active = Some(Active {
            id,
            keep_conn: begin.keep_conn(),
            deadline: now + self.limits.read_timeout,
            params_buf: Vec::new(),
            params: None,
            stdin: Vec::new(),
            stdin_done: false,
        });
        Ok(Step::Continue)
    }

    /// Ends the active request with OVERLOADED and passes `e` through.
    fn overloaded(&mut self, out: &mut Vec<u8>, e: ConnError) -> ConnError {
        if let Some(a) = self.active.take() {
            record::encode_end_request(out, a.id, 0, ProtocolStatus::Overloaded);
        }
        e
    }

    /// §4.1: answer the variables we know, each once, in the order asked.
    fn answer_get_values(&self, content: &[u8], out: &mut Vec<u8>) -> Result<(), ConnError> {
        let max = self.limits.max_connections.to_string();
        let mut answered: Vec<(&[u8], &[u8])> = Vec::new();
        for pair in record::pairs(content) {
            let (name, _) = pair?;
            let value: &[u8] = match name {
                b"FCGI_MAX_CONNS" | b"FCGI_MAX_REQS" => max.as_bytes(),
                b"FCGI_MPXS_CONNS" => b"0",
                _ => continue,
            };
            if !answered.iter().any(|(n, _)| *n == name) {
                answered.push((name, value));
            }
        }
        record::encode_get_values_result(out, &answered)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ty: RecordType, id: u16, content: &[u8]) -> Record<'_> {
        Record {
            record_type: ty,
            request_id: id,
            content,
        }
    }

    fn begin_body(role: u16, flags: u8) -> [u8; 8] {
        let r = role.to_be_bytes();
        [r[0], r[1], flags, 0, 0, 0, 0, 0]
    }

    /// Decodes every record in `out` into (type, id, content).
    fn records(out: &[u8]) -> Vec<(RecordType, u16, Vec<u8>)> {
        let mut v = Vec::new();
        let mut pos = 0;
        while let Some((r, used)) = record::decode(&out[pos..]).unwrap() {
            v.push((r.record_type, r.request_id, r.content.to_vec()));
            pos += used;
        }
        assert_eq!(pos, out.len());
        v
    }

    #[test]
    fn full_request_dispatches_after_empty_stdin_only() {
        let limits = Limits::default();
        let mut s = Session::new(&limits);
        let now = Instant::now();
        let mut out = Vec::new();
        let mut params = Vec::new();
        record::encode_pair(&mut params, b"CONTENT_LENGTH", b"11").unwrap();
        let body = begin_body(1, 1);
        for r in [
            rec(RecordType::BeginRequest, 1, &body),
            rec(RecordType::Params, 1, &params),
            rec(RecordType::Params, 1, b""),
        ] {
            assert!(matches!(s.on_record(r, now, &mut out), Ok(Step::Continue)));
        }
        // CONTENT_LENGTH says 11 but the empty STDIN completes the request.
        match s.on_record(rec(RecordType::Stdin, 1, b""), now, &mut out) {
            Ok(Step::Dispatch { req, id, keep_conn }) => {
                assert_eq!((id, keep_conn), (1, true));
                assert_eq!(req.params.get("CONTENT_LENGTH"), Some(&b"11"[..]));
                assert!(req.stdin.is_empty());
            }
            _ => panic!("expected dispatch"),
        }
        assert!(out.is_empty());
        assert!(s.active.is_none());
    }

    #[test]
    fn over_limit_params_answer_overloaded() {
        let limits = Limits {
            max_params_bytes: 10,
            ..Limits::default()
        };
        let mut s = Session::new(&limits);
        let now = Instant::now();
        let mut out = Vec::new();
        let body = begin_body(1, 0);
        s.on_record(rec(RecordType::BeginRequest, 7, &body), now, &mut out)
            .unwrap();
        s.on_record(rec(RecordType::Params, 7, &[1; 6]), now, &mut out)
            .unwrap();
        let e = s
            .on_record(rec(RecordType::Params, 7, &[1; 6]), now, &mut out)
            .err()
            .unwrap();
        assert!(matches!(e, ConnError::ParamsTooLarge { id: 7, limit: 10 }));
        assert_eq!(
            records(&out),
            vec![(RecordType::EndRequest, 7, vec![0, 0, 0, 0, 2, 0, 0, 0])]
        );
    }

    #[test]
    fn management_and_stray_records() {
        let limits = Limits::default();
        let mut s = Session::new(&limits);
        let now = Instant::now();
        let mut out = Vec::new();
        // Stray STDIN for an unknown id: nothing.
        s.on_record(rec(RecordType::Stdin, 3, b""), now, &mut out)
            .unwrap();
        assert!(out.is_empty());
        // Unknown management type.
        s.on_record(rec(RecordType::Other(42), 0, b""), now, &mut out)
            .unwrap();
        let mut q = Vec::new();
        for n in [
            "FCGI_MPXS_CONNS",
            "NOPE",
            "FCGI_MAX_REQS",
            "FCGI_MPXS_CONNS",
        ] {
            record::encode_pair(&mut q, n.as_bytes(), b"").unwrap();
        }
        s.on_record(rec(RecordType::GetValues, 0, &q), now, &mut out)
            .unwrap();
        let got = records(&out);
        assert_eq!(
            got[0],
            (RecordType::UnknownType, 0, vec![42, 0, 0, 0, 0, 0, 0, 0])
        );
        assert_eq!(got[1].0, RecordType::GetValuesResult);
        let answer: Vec<_> = record::pairs(&got[1].2).map(|p| p.unwrap()).collect();
        assert_eq!(
            answer,
            vec![
                (&b"FCGI_MPXS_CONNS"[..], &b"0"[..]),
                (&b"FCGI_MAX_REQS"[..], &b"1024"[..])
            ]
        );
    }
}
