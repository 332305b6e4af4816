//! Oracle of the `fastcgi_records` fuzz target: FastCGI records, name-value
//! pairs and the connection state machine. Included with `#[path]` by the
//! target and by `tests/fuzz_regressions.rs` (see there); public API only.

use std::future::Future;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use nginx_auth_fcgi::fastcgi::record::{
    self, BeginRequest, Header, ProtocolStatus, RecordError, RecordType, Role,
};
use nginx_auth_fcgi::fastcgi::{conn, Handler, Limits, Params, ParamsError, Request, Response};

/// `fastcgi_records` target. The first byte picks the limits (bit 0 set: tiny
/// limits, so the OVERLOADED paths are reachable with short inputs); the rest
/// is what a peer sends on one connection.
///
/// Checks: (1) every record decodes, re-encodes and decodes to the same record;
/// (2) the bytes as a PARAMS stream decode, re-encode canonically and decode to
/// the same pairs, and [`Params::parse`] agrees with the pair iterator;
/// (3) [`conn::serve`] over an in-memory pipe answers byte for byte what an
/// independent model of the table in [`conn`]'s docs predicts, with an echo
/// handler, so the params and stdin a request is dispatched with are exactly
/// the ones sent.
pub fn check_fastcgi_records(data: &[u8]) {
    let (selector, wire) = data.split_first().map_or((0, data), |(s, w)| (*s, w));
    let limits = if selector & 1 == 0 {
        Limits::default()
    } else {
        Limits {
            max_params_bytes: 64,
            max_params_count: 4,
            max_stdin_bytes: 64,
            ..Limits::default()
        }
    };
    check_record_layer(wire);
    check_pair_layer(wire);
    let got = run_connection(wire, &limits);
    let want = model_connection(wire, &limits);
    assert!(
        got == want,
        "connection answered\n  {:?}\nbut the model expects\n  {:?}",
        describe_records(&got),
        describe_records(&want)
    );
}

fn check_record_layer(wire: &[u8]) {
    let mut pos = 0;
    loop {
        let rest = &wire[pos..];
        match record::decode(rest) {
            Ok(Some((rec, used))) => {
                let head = rest.first_chunk().expect("a decoded record has a header");
                let h = Header::decode(head);
                assert_eq!(
                    used,
                    h.record_len(),
                    "consumed != header + content + padding"
                );
                assert!(used <= rest.len());
                assert_eq!(rec.content.len(), usize::from(h.content_length));
                assert_eq!(rec.content, &rest[8..8 + rec.content.len()]);
                // Re-encoded without padding, then with the stream encoder
                // (padded to 8): the same record comes back.
                let mut again = Header {
                    padding_length: 0,
                    ..h
                }
                .encode()
                .to_vec();
                again.extend_from_slice(rec.content);
                assert_eq!(record::decode(&again), Ok(Some((rec, again.len()))));
                let mut stream = Vec::new();
                record::encode_stream(&mut stream, rec.record_type, rec.request_id, rec.content);
                if rec.content.is_empty() {
                    assert!(stream.is_empty());
                    record::encode_stream_end(&mut stream, rec.record_type, rec.request_id);
                }
                assert_eq!(stream.len() % 8, 0);
                assert_eq!(record::decode(&stream), Ok(Some((rec, stream.len()))));
                pos += used;
            }
            Ok(None) => {
                if let Some(head) = rest.first_chunk() {
                    assert!(rest.len() < Header::decode(head).record_len());
                }
                return;
            }
            Err(RecordError::UnsupportedVersion(v)) => {
                assert!(rest.len() >= 8 && rest[0] == v && v != record::VERSION_1);
                return;
            }
            Err(e) => panic!("record::decode returned {e:?}, an encoder-only error"),
        }
    }
}

fn check_pair_layer(stream: &[u8]) {
    let mut decoded: Vec<(&[u8], &[u8])> = Vec::new();
    let mut failed_at = None;
    for p in record::pairs(stream) {
        match p {
            Ok(pair) => decoded.push(pair),
            Err(RecordError::TruncatedPair { offset }) => failed_at = Some(offset),
            Err(e) => panic!("pairs returned {e:?}, an encoder-only error"),
        }
    }
    // next_pair by hand: positions advance, ranges are adjacent and in bounds.
    let mut pos = 0;
    let mut by_hand = Vec::new();
    loop {
        match record::next_pair(stream, pos) {
            Ok(Some((r, next))) => {
                assert!(pos < next && next <= stream.len());
                assert!(pos < r.name.start && r.name.end == r.value.start && r.value.end == next);
                by_hand.push((&stream[r.name], &stream[r.value]));
                pos = next;
            }
            Ok(None) => {
                assert_eq!(pos, stream.len());
                assert_eq!(failed_at, None);
                break;
            }
            Err(e) => {
                assert_eq!(e, RecordError::TruncatedPair { offset: pos });
                assert_eq!(failed_at, Some(pos));
                break;
            }
        }
    }
    assert_eq!(by_hand, decoded);
    // Canonical re-encoding is never longer and decodes to the same pairs.
    let mut enc = Vec::new();
    for (n, v) in &decoded {
        record::encode_pair(&mut enc, n, v).expect("a decoded pair re-encodes");
    }
    assert!(enc.len() <= pos);
    let again: Vec<_> = record::pairs(&enc)
        .collect::<Result<_, _>>()
        .expect("re-encoded pairs decode");
    assert_eq!(again, decoded);
    match Params::parse(stream.to_vec(), usize::MAX) {
        Ok(p) => {
            assert_eq!(failed_at, None);
            assert_eq!(p.iter().collect::<Vec<_>>(), decoded);
        }
        Err(ParamsError::Malformed(_)) => assert!(failed_at.is_some()),
        Err(ParamsError::TooMany) => panic!("TooMany with no limit"),
    }
}

/// Echoes what it was given, so the output shows what was dispatched.
struct Echo;

const ECHO_STATUS: u32 = 7;

fn echo_body<'a>(params: impl Iterator<Item = (&'a [u8], &'a [u8])>, stdin: &[u8]) -> Vec<u8> {
    let mut out = b"Status: 200\r\n\r\n".to_vec();
    for (n, v) in params {
        record::encode_pair(&mut out, n, v).expect("params within limits encode");
    }
    record::encode_pair(&mut out, b"(stdin)", stdin).expect("stdin within limits encodes");
    out
}

impl Handler for Echo {
    fn handle(&self, req: Request) -> impl Future<Output = Response> + Send {
        let stdout = echo_body(req.params.iter(), &req.stdin);
        async move {
            Response {
                stdout,
                app_status: ECHO_STATUS,
            }
        }
    }
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
}

/// Sends `wire` on a fresh connection, half-closes, and returns every byte
/// [`conn::serve`] wrote before it closed.
fn run_connection(wire: &[u8], limits: &Limits) -> Vec<u8> {
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let (mut from_server, mut to_server) = tokio::io::split(client);
            let (_keep_running, shutdown) = watch::channel(false);
            let send = async move {
                // The server may close before reading everything: not an error here.
                let _ = to_server.write_all(wire).await;
                let _ = to_server.shutdown().await;
            };
            let receive = async move {
                let mut got = Vec::new();
                let _ = from_server.read_to_end(&mut got).await;
                got
            };
            let (served, (), got) =
                tokio::join!(conn::serve(server, &Echo, limits, shutdown), send, receive);
            // Only the peer's misbehaviour may end a connection with an error.
            if let Err(e) = served {
                assert!(
                    !matches!(
                        e,
                        conn::ConnError::Io(_)
                            | conn::ConnError::ReadTimeout(_)
                            | conn::ConnError::WriteTimeout(_)
                    ),
                    "in-memory connection failed: {e}"
                );
            }
            got
        })
    })
}

/// What the peer must receive for `wire`, written from the table in the
/// [`conn`] module docs, record by record. Returns when the connection closes.
fn model_connection(wire: &[u8], limits: &Limits) -> Vec<u8> {
    struct Active {
        id: u16,
        keep: bool,
        params_buf: Vec<u8>,
        params: Option<Vec<(Vec<u8>, Vec<u8>)>>,
        stdin: Vec<u8>,
        stdin_done: bool,
    }
    let end = |out: &mut Vec<u8>, id, st| record::encode_end_request(out, id, 0, st);
    let mut out = Vec::new();
    let mut active: Option<Active> = None;
    let mut pos = 0;
    while let Ok(Some((rec, used))) = record::decode(&wire[pos..]) {
        pos += used;
        let id = rec.request_id;
        if id == record::NULL_REQUEST_ID {
            if rec.record_type != RecordType::GetValues {
                record::encode_unknown_type(&mut out, rec.record_type);
                continue;
            }
            let max = limits.max_connections.to_string();
            let mut answer: Vec<(&[u8], &[u8])> = Vec::new();
            for pair in record::pairs(rec.content) {
                let Ok((name, _)) = pair else { return out };
                let value: &[u8] = match name {
                    b"FCGI_MAX_CONNS" | b"FCGI_MAX_REQS" => max.as_bytes(),
                    b"FCGI_MPXS_CONNS" => b"0",
                    _ => continue,
                };
                if !answer.iter().any(|(n, _)| *n == name) {
                    answer.push((name, value));
                }
            }
            record::encode_get_values_result(&mut out, &answer).expect("three short pairs fit");
            continue;
        }
        if rec.record_type == RecordType::BeginRequest {
            let Ok(begin) = BeginRequest::decode(rec.content) else {
                return out;
            };
            match &active {
                Some(a) if a.id == id => return out,
                Some(_) => {
                    end(&mut out, id, ProtocolStatus::CantMpxConn);
                    continue;
                }
                None => {}
            }
            if begin.role != Role::Responder {
                end(&mut out, id, ProtocolStatus::UnknownRole);
                if begin.keep_conn() {
                    continue;
                }
                return out;
            }
            active = Some(Active {
                id,
                keep: begin.keep_conn(),
                params_buf: Vec::new(),
                params: None,
                stdin: Vec::new(),
                stdin_done: false,
            });
            continue;
        }
        let Some(a) = active.as_mut().filter(|a| a.id == id) else {
            continue;
        };
        match rec.record_type {
            RecordType::AbortRequest => {
                let keep = a.keep;
                active = None;
                end(&mut out, id, ProtocolStatus::RequestComplete);
                if keep {
                    continue;
                }
                return out;
            }
            RecordType::Params if a.params.is_none() => {
                if rec.content.is_empty() {
                    let mut list = Vec::new();
                    for pair in record::pairs(&a.params_buf) {
                        let Ok((n, v)) = pair else { return out };
                        if list.len() >= limits.max_params_count {
                            end(&mut out, id, ProtocolStatus::Overloaded);
                            return out;
                        }
                        list.push((n.to_vec(), v.to_vec()));
                    }
                    a.params = Some(list);
                } else if a.params_buf.len() + rec.content.len() > limits.max_params_bytes {
                    end(&mut out, id, ProtocolStatus::Overloaded);
                    return out;
                } else {
                    a.params_buf.extend_from_slice(rec.content);
                }
            }
            RecordType::Stdin if !a.stdin_done => {
                if rec.content.is_empty() {
                    a.stdin_done = true;
                } else if a.stdin.len() + rec.content.len() > limits.max_stdin_bytes {
                    end(&mut out, id, ProtocolStatus::Overloaded);
                    return out;
                } else {
                    a.stdin.extend_from_slice(rec.content);
                }
            }
            _ => {}
        }
        if let Some(params) = a.params.as_ref().filter(|_| a.stdin_done) {
            let body = echo_body(
                params.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
                &a.stdin,
            );
            record::encode_stream(&mut out, RecordType::Stdout, id, &body);
            record::encode_stream_end(&mut out, RecordType::Stdout, id);
            record::encode_end_request(&mut out, id, ECHO_STATUS, ProtocolStatus::RequestComplete);
            let keep = a.keep;
            active = None;
            if !keep {
                return out;
            }
        }
    }
    out
}

/// (type, id, content length) of each record, for assertion messages.
fn describe_records(out: &[u8]) -> Vec<(RecordType, u16, usize)> {
    let mut v = Vec::new();
    let mut pos = 0;
    while let Ok(Some((r, used))) = record::decode(&out[pos..]) {
        v.push((r.record_type, r.request_id, r.content.len()));
        pos += used;
    }
    v
}
