//! Invariant checks shared by the fuzz targets (`fuzz/fuzz_targets/*.rs`, run
//! on nightly under libFuzzer) and their replay test
//! (`tests/fuzz_regressions.rs`, run on stable by `cargo test`, so CI replays
//! every committed corpus file and crash reproducer without nightly).
//!
//! Each `check_*` function takes arbitrary bytes, runs them through one parser
//! the way the daemon does, and panics when the parser panics **or** when its
//! result breaks an invariant. "No panic" alone would let a parser that
//! silently returns garbage pass.
//!
//! Not an API: hidden from the docs, changes with the parsers.

use std::future::Future;
use std::sync::LazyLock;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use nginx_auth_fcgi::auth_http::request::{AuthMethod, MailAuthRequest, ProtocolError};
use nginx_auth_fcgi::fastcgi::record::{
    self, BeginRequest, Header, ProtocolStatus, RecordError, RecordType, Role,
};
use nginx_auth_fcgi::fastcgi::{conn, Handler, Limits, Params, ParamsError, Request, Response};
use nginx_auth_fcgi::http_auth::digest::{self, Algorithm, Credentials, NonceState, Nonces};
use nginx_auth_fcgi::passdb::passwd_file;
use nginx_auth_fcgi::scheme::Scheme;

// ---------------------------------------------------------------------------
// FastCGI: records, name-value pairs, and the connection state machine.

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

// ---------------------------------------------------------------------------
// auth_http: params -> MailAuthRequest.

/// `auth_http_request` target: the bytes are a PARAMS stream (its decodable
/// prefix is used), parsed into a [`MailAuthRequest`].
///
/// Checks: `user`, `pass` and the certificate are exactly what an independent
/// `%XX` decoder makes of the raw values (nothing the unescape should have
/// removed survives, nothing else is lost); method, protocol, salt, attempt,
/// envelope and TLS info are consistent with the raw params; every error names
/// a param that really is missing or malformed.
pub fn check_auth_http_request(data: &[u8]) {
    let list: Vec<(Vec<u8>, Vec<u8>)> = record::pairs(data)
        .map_while(Result::ok)
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect();
    let p = Params::from_pairs(list);
    let _ = MailAuthRequest::is_mail_request(&p);
    let raw = |name: &str| p.get(name);
    match MailAuthRequest::from_params(&p) {
        Ok(r) => {
            for (name, got) in [
                ("HTTP_AUTH_USER", r.user.as_slice()),
                ("HTTP_AUTH_PASS", r.pass.expose()),
            ] {
                let raw_v = raw(name).unwrap_or_default();
                assert_eq!(Some(got), reference_unescape(raw_v).as_deref(), "{name}");
                let escapes = raw_v.iter().filter(|b| **b == b'%').count();
                assert_eq!(got.len(), raw_v.len() - 2 * escapes, "{name}");
            }
            let method = raw("HTTP_AUTH_METHOD").expect("parsed without Auth-Method");
            assert!(
                method == r.method.as_str().as_bytes()
                    || (method == b"login" && r.method == AuthMethod::Plain)
            );
            assert_eq!(
                raw("HTTP_AUTH_PROTOCOL"),
                Some(r.protocol.as_str().as_bytes())
            );
            let challenge = matches!(r.method, AuthMethod::Apop | AuthMethod::CramMd5);
            assert_eq!(r.salt.is_some(), challenge);
            if let Some(salt) = &r.salt {
                assert!(!salt.is_empty());
                assert_eq!(raw("HTTP_AUTH_SALT"), Some(salt.as_slice()));
            }
            assert!(r.attempt >= 1);
            if let Some(a) = raw("HTTP_AUTH_LOGIN_ATTEMPT") {
                assert_eq!(parse_text::<u32>(a), Some(r.attempt));
            }
            assert_eq!(
                r.client_ip,
                raw("HTTP_CLIENT_IP").map(|v| parse_text(v).expect("accepted Client-IP"))
            );
            assert_eq!(r.smtp.is_some(), r.method == AuthMethod::None);
            if let Some(env) = &r.smtp {
                for addr in [env.recipient(), env.sender()].into_iter().flatten() {
                    assert!(!addr.contains('>'));
                }
            }
            assert_eq!(r.ssl.is_some(), raw("HTTP_AUTH_SSL") == Some(b"on"));
            if let Some(cert) = r.ssl.as_ref().and_then(|s| s.cert.as_ref()) {
                let raw_cert = raw("HTTP_AUTH_SSL_CERT").expect("cert without param");
                assert_eq!(Some(cert), reference_unescape(raw_cert).as_ref());
            }
            for (i, name) in r.duplicates.iter().enumerate() {
                assert!(p.count(name) > 1, "{name} reported duplicate");
                assert!(!r.duplicates[..i].contains(name));
            }
        }
        Err(ProtocolError::Missing(what)) => {
            let present = match what {
                "Auth-Method" => raw("HTTP_AUTH_METHOD").is_some(),
                "Auth-Protocol" => raw("HTTP_AUTH_PROTOCOL").is_some(),
                "Auth-Salt" => raw("HTTP_AUTH_SALT").is_some_and(|s| !s.is_empty()),
                other => panic!("unexpected Missing({other})"),
            };
            assert!(!present, "Missing({what}) but it is there");
        }
        Err(ProtocolError::Malformed(what)) => {
            let value = |name| raw(name).unwrap_or_else(|| panic!("Malformed({what}) absent"));
            let bad = match what {
                "Auth-Method" => !matches!(
                    value("HTTP_AUTH_METHOD"),
                    b"plain" | b"login" | b"apop" | b"cram-md5" | b"external" | b"none"
                ),
                "Auth-Protocol" => {
                    !matches!(value("HTTP_AUTH_PROTOCOL"), b"imap" | b"pop3" | b"smtp")
                }
                "Auth-User" => reference_unescape(value("HTTP_AUTH_USER")).is_none(),
                "Auth-Pass" => reference_unescape(value("HTTP_AUTH_PASS")).is_none(),
                "Auth-Login-Attempt" => {
                    parse_text::<u32>(value("HTTP_AUTH_LOGIN_ATTEMPT")).is_none_or(|n| n == 0)
                }
                "Client-IP" => parse_text::<std::net::IpAddr>(value("HTTP_CLIENT_IP")).is_none(),
                "Proxy-Protocol-Addr" => {
                    parse_text::<std::net::IpAddr>(value("HTTP_PROXY_PROTOCOL_ADDR")).is_none()
                }
                other => panic!("unexpected Malformed({other})"),
            };
            assert!(bad, "Malformed({what}) for a valid value");
        }
    }
}

fn parse_text<T: std::str::FromStr>(v: &[u8]) -> Option<T> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// nginx's `NGX_ESCAPE_MAIL_AUTH` undone, written independently of
/// [`crate::auth_http::request::unescape`]: `%` must be followed by exactly two
/// hex digits (`u8::from_str_radix` alone would accept `%+1`).
fn reference_unescape(v: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = v;
    while let Some((&c, tail)) = rest.split_first() {
        if c != b'%' {
            out.push(c);
            rest = tail;
            continue;
        }
        let hex = tail
            .get(..2)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
        out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
        rest = &tail[2..];
    }
    Some(out)
}

// ---------------------------------------------------------------------------
// Digest Authorization header.

static NONCES: LazyLock<Nonces> = LazyLock::new(Nonces::new);

/// `digest_authorization` target: the bytes are an `Authorization` header
/// value (made UTF-8 lossily, as the daemon does), split into scheme and rest
/// as `HttpAuth` does; the auth-param parser runs on both, the credential
/// parser on the rest.
///
/// Checks: no name or value is longer than the input; names are lower-case
/// tokens, unique; serialising the params and parsing again gives the same
/// list; accepted credentials have a hex response of the algorithm's length,
/// an 8-hex-digit non-zero nc, and hash without panicking; a nonce we did not
/// issue is never accepted; an nc is accepted at most once.
pub fn check_digest_authorization(data: &[u8]) {
    let header = String::from_utf8_lossy(data);
    let trimmed = header.trim();
    let (_scheme, rest) = trimmed.split_once(' ').unwrap_or((trimmed, ""));
    check_auth_params(&header);
    check_auth_params(rest);
    let Ok(c) = Credentials::parse(rest) else {
        return;
    };
    for v in [
        &c.username,
        &c.realm,
        &c.nonce,
        &c.uri,
        &c.cnonce,
        &c.response,
    ]
    .into_iter()
    .chain(c.opaque.as_ref())
    {
        assert!(v.len() <= rest.len(), "value longer than the input");
    }
    let hex_len = match c.algorithm {
        Algorithm::Md5 | Algorithm::Md5Sess => 32,
        Algorithm::Sha256 | Algorithm::Sha256Sess => 64,
    };
    assert_eq!(c.response.len(), hex_len);
    assert!(c
        .response
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(c.nc_text.len(), 8);
    assert_eq!(u32::from_str_radix(&c.nc_text, 16).ok(), Some(c.nc));
    assert!(c.nc > 0);
    let expected = c.expected(b"password", "GET");
    assert_eq!(expected.len(), hex_len);
    assert_eq!(c.matches(&expected), c.response == expected);
    assert_eq!(c.expected_from_ha1(&"0".repeat(32), "GET").len(), hex_len);
    assert_eq!(
        NONCES.check_at(&c.nonce, &c.realm, 300, 1_700_000_000),
        NonceState::Invalid,
        "a nonce we never issued was accepted"
    );
    // The first use may or may not be new (the fuzzer repeats inputs).
    let _ = NONCES.accept_nc(&c.nonce, &c.cnonce, c.nc);
    assert!(
        !NONCES.accept_nc(&c.nonce, &c.cnonce, c.nc),
        "nc replay accepted"
    );
}

fn check_auth_params(s: &str) {
    let Ok(list) = digest::parse_params(s) else {
        return;
    };
    let is_tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    for (i, (name, value)) in list.iter().enumerate() {
        assert!(
            !name.is_empty() && name.bytes().all(is_tchar),
            "name {name:?}"
        );
        assert_eq!(*name, name.to_ascii_lowercase());
        assert!(
            name.len() + value.len() < s.len(),
            "param longer than the input"
        );
        assert!(
            !list[..i].iter().any(|(n, _)| n == name),
            "duplicate {name}"
        );
    }
    let quoted: Vec<String> = list
        .iter()
        .map(|(n, v)| format!("{n}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    assert_eq!(
        digest::parse_params(&quoted.join(", ")).as_ref(),
        Ok(&list),
        "quoted round trip"
    );
}

// ---------------------------------------------------------------------------
// passwd-file.

/// `passwd_file` target: the bytes are a whole passwd-file, parsed without DNS
/// (`host=` takes IP literals only), with and without a default scheme.
///
/// Checks: no user name is empty or holds `:` or a line break; each user is
/// the first field of a line of the file; `port=` is never 0; `user=` is never
/// empty and holds no whitespace or control character (it becomes the
/// `Auth-User` header); and no problem message repeats a distinctive password
/// (see [`passwords_and_quotable_parts`]) outside the user names, scheme names
/// and extra fields it may quote.
pub fn check_passwd_file(data: &[u8]) {
    let lines: Vec<&[u8]> = data
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect();
    let first_fields: std::collections::HashSet<&[u8]> = lines
        .iter()
        .filter_map(|l| l.iter().position(|b| *b == b':').map(|i| &l[..i]))
        .collect();
    for default in [None, Some(Scheme::Plain)] {
        let (users, problems) = passwd_file::parse_without_dns(data, default);
        assert!(users.len() <= lines.len());
        for (name, entry) in &users {
            assert!(!name.is_empty());
            assert!(
                !name.contains([':', '\n']),
                "user name {name:?} holds a separator"
            );
            assert_eq!(entry.principal.user, *name);
            assert!(
                first_fields.contains(name.as_bytes()),
                "user {name:?} is not the first field of any line"
            );
            assert_ne!(entry.principal.upstream_port, Some(0));
            if let Some(b) = &entry.principal.backend_user {
                assert!(
                    !b.is_empty()
                        && !b
                            .bytes()
                            .any(|c| c.is_ascii_whitespace() || c.is_ascii_control()),
                    "user= value {b:?} cannot be sent as Auth-User"
                );
            }
        }
        let (secrets, quotable) = passwords_and_quotable_parts(&lines);
        let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        for p in &problems {
            if !secrets.iter().any(|s| contains(p.as_bytes(), s)) {
                continue;
            }
            // Cut out everything a message may legitimately quote (user
            // names, scheme names, extra fields); what is left is template
            // text and line numbers, which a distinctive password cannot be
            // part of. A '\n' keeps the pieces apart, as no password holds one.
            let mut rest = p.as_bytes().to_vec();
            for q in &quotable {
                rest = replace_all(&rest, q, b"\n");
            }
            for secret in &secrets {
                assert!(!contains(&rest, secret), "problem {p:?} repeats a password");
            }
        }
    }
}

fn replace_all(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// The distinctive passwords of the file (the part of the password field
/// after a `{SCHEME}` prefix, at least 4 bytes, with a byte no fixed message
/// text has: `~`, `^`, `|` or non-ASCII), and every part of the file a
/// problem message may quote, longest first.
fn passwords_and_quotable_parts<'a>(lines: &[&'a [u8]]) -> (Vec<&'a [u8]>, Vec<&'a [u8]>) {
    let mut secrets = Vec::new();
    let mut quotable: Vec<&[u8]> = Vec::new();
    for line in lines {
        let mut fields = line.splitn(8, |b| *b == b':');
        let Some(user) = fields.next() else { continue };
        quotable.push(user);
        let Some(field) = fields.next() else { continue };
        let secret = match field.strip_prefix(b"{") {
            Some(f) => match f.iter().position(|b| *b == b'}') {
                Some(close) => {
                    quotable.push(&f[..close]);
                    &f[close + 1..]
                }
                // No scheme, so nothing is parsed as a password; the extra
                // fields below are still quotable.
                None => &[][..],
            },
            None => field,
        };
        if secret.len() >= 4 && secret.iter().any(|b| b"~^|".contains(b) || *b >= 0x80) {
            secrets.push(secret);
        }
        if let Some(extra) = fields.nth(5) {
            for token in extra.split(u8::is_ascii_whitespace) {
                quotable.push(token);
                if let Some(eq) = token.iter().position(|b| *b == b'=') {
                    quotable.push(&token[eq + 1..]);
                }
            }
        }
    }
    quotable.retain(|q| !q.is_empty());
    quotable.sort_by_key(|q| std::cmp::Reverse(q.len()));
    (secrets, quotable)
}
