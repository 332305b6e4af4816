//! The bad-input matrix against the REAL daemon binary: every case opens its
//! own connection to a spawned `nginx-auth-fcgi serve`, sends hostile or
//! broken FastCGI, and checks the defined outcome (the table in
//! `src/fastcgi/conn.rs`); after each case a good login on a fresh connection
//! must still get `Auth-Status: OK`. Because the daemon is a separate process,
//! its memory (`VmRSS`, `VmHWM` in `/proc/PID/status`) and descriptors
//! (`/proc/PID/fd`) are those of the server alone: after the whole matrix the
//! fd count is back at its baseline and the peak RSS stays far below what any
//! claimed length (up to 4 GiB) would have cost had it been allocated.
//!
//! The daemon runs with `read_timeout_ms = 2000` so the slow and stalled
//! clients are cut off quickly; no assertion is about time, only about what
//! the peer sees.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::daemon::Daemon;
use crate::common::fcgi::{self, Rec};
use base64::Engine;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

const PASSWORD: &[u8] = b"wonderland";
/// Longest any single case may take until the server has closed.
const CLOSE_WITHIN: Duration = Duration::from_secs(15);
/// The configured read timeout (ms); long enough for a loaded machine to
/// deliver a whole request, short enough for the slow cases.
const READ_TIMEOUT_MS: u64 = 2000;
/// Peak RSS the daemon may reach over the whole matrix. The baseline is a
/// few MiB; 1,100 connections with their buffers add ~20 MiB; one allocation
/// of a claimed 2 GiB length would blow it.
const MAX_HWM_KIB: u64 = 64 * 1024;

/// The daemon with the matrix's limits and the throttle off.
fn start_daemon() -> Daemon {
    let (dir, users) = crate::common::temp_file("users", "alice:{PLAIN}wonderland::::::\n");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "passdb = [\"passwd-file:{}\"]\n\
             upstream = [\"imap=127.0.0.1:1143\"]\n\
             log = \"stderr\"\n\
             log_level = \"info\"\n\
             [limits]\n\
             read_timeout_ms = {READ_TIMEOUT_MS}\n\
             [throttle]\n\
             enabled = false\n",
            users.display()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    Daemon::start(dir, ["--config", &config])
}

async fn connect(d: &Daemon) -> UnixStream {
    UnixStream::connect(d.sock()).await.unwrap()
}

/// The fd count of `pid` once it holds still for 50 ms (the daemon closes
/// a finished connection a moment after its client saw the reply).
async fn settled_fd_count(pid: u32) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = fd_count(pid);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = fd_count(pid);
        if now == last {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon's fd count never settled"
        );
        last = now;
    }
}

/// A `kB` field of `/proc/PID/status` (VmRSS, VmHWM).
fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

// ------------------------------------------------------------- requests

fn mail_pairs<'a>(user: &'a [u8], pass: &'a [u8]) -> Vec<(&'a [u8], &'a [u8])> {
    fcgi::mail_pairs(user, pass, b"192.0.2.7")
}

/// A complete mail login request for `id`.
fn login(id: u16, flags: u8, user: &[u8], pass: &[u8]) -> Vec<u8> {
    fcgi::request(id, flags, &mail_pairs(user, pass), b"")
}

fn good(id: u16, flags: u8) -> Vec<u8> {
    login(id, flags, b"alice", PASSWORD)
}

/// An `auth_request` subrequest with HTTP Basic credentials `user:pass`.
fn basic(user_pass: &[u8]) -> Vec<u8> {
    let header = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_pass)
    );
    basic_raw(header.as_bytes())
}

fn basic_raw(authorization: &[u8]) -> Vec<u8> {
    fcgi::request(
        1,
        0,
        &[
            (b"REQUEST_METHOD", b"GET"),
            (b"REQUEST_URI", b"/private/"),
            (b"AUTH_REALM", b"private"),
            (b"HTTP_AUTHORIZATION", authorization),
        ],
        b"",
    )
}

/// PARAMS records of `content` without the terminator.
fn params_records(id: u16, content: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for part in content.chunks(0xFFFF) {
        v.extend(fcgi::record(fcgi::PARAMS, id, part));
    }
    v
}

/// A pair whose name length is given as a raw 4-byte field; the bytes after
/// it are `tail`.
fn claimed_pair(len_field: u32, tail: &[u8]) -> Vec<u8> {
    let mut v = len_field.to_be_bytes().to_vec();
    v.push(0);
    v.extend_from_slice(tail);
    v
}

// -------------------------------------------------------------- outcomes

/// What the server sent on one connection, grouped.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// STDOUT then END_REQUEST(REQUEST_COMPLETE): a handler reply.
    Reply(u16, Verdict),
    /// END_REQUEST without STDOUT, with this protocol status.
    End(u16, u8),
    /// UNKNOWN_TYPE for this record type.
    UnknownType(u8),
    /// Anything else: always a failure.
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// `Auth-Status: OK` (mail) or `Status: 200 OK` (HTTP).
    Ok,
    /// A reply that is not a success.
    Refused,
}

fn verdict(stdout: &[u8]) -> Verdict {
    let r = fcgi::Reply {
        stdout: stdout.to_vec(),
        ..fcgi::Reply::default()
    };
    match (r.header("Auth-Status"), r.header("Status")) {
        (Some(s), _) if s == "OK" => Verdict::Ok,
        (None, Some(s)) if s.starts_with("200") => Verdict::Ok,
        _ => Verdict::Refused,
    }
}

fn events(records: &[Rec]) -> Vec<Event> {
    let mut out = Vec::new();
    let mut stdout: Option<(u16, Vec<u8>)> = None;
    for r in records {
        match r.ty {
            _ if r.version != 1 => out.push(Event::Other(format!("version {}", r.version))),
            fcgi::STDOUT => {
                let s = stdout.get_or_insert_with(|| (r.id, Vec::new()));
                s.1.extend_from_slice(&r.content);
            }
            fcgi::END_REQUEST => {
                let (_, status) = fcgi::end_request_body(&r.content);
                match stdout.take() {
                    Some((id, text)) if id == r.id && status == fcgi::REQUEST_COMPLETE => {
                        out.push(Event::Reply(id, verdict(&text)))
                    }
                    Some(s) => out.push(Event::Other(format!("stdout {s:?} then {r:?}"))),
                    None => out.push(Event::End(r.id, status)),
                }
            }
            fcgi::UNKNOWN_TYPE if r.id == 0 => out.push(Event::UnknownType(r.content[0])),
            _ => out.push(Event::Other(format!("{r:?}"))),
        }
    }
    if let Some(s) = stdout {
        out.push(Event::Other(format!("STDOUT without END_REQUEST: {s:?}")));
    }
    out
}

/// What the client does once `wire` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// Half-closes its side (EOF to the server) and reads until closed.
    HalfClose,
    /// Stays silent with the connection open: the server must cut it off.
    Hold,
    /// Drops the connection at once without reading anything.
    Drop,
}

struct Case {
    name: String,
    wire: Vec<u8>,
    after: After,
    /// What the server must send before closing (ignored for `Drop`).
    expect: Vec<Event>,
}

fn case(name: impl Into<String>, wire: Vec<u8>, after: After, expect: Vec<Event>) -> Case {
    Case {
        name: name.into(),
        wire,
        after,
        expect,
    }
}

/// Runs one case; returns a problem description, if any.
async fn run_case(sock: PathBuf, c: Case) -> Option<String> {
    let s = UnixStream::connect(&sock).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let after = c.after;
    let wire = c.wire;
    let writer = tokio::spawn(async move {
        // A write may fail once the server has refused and closed: expected.
        for chunk in wire.chunks(32 * 1024) {
            if wr.write_all(chunk).await.is_err() {
                return wr;
            }
        }
        if after == After::HalfClose {
            let _ = wr.shutdown().await;
        }
        wr
    });
    if after == After::Drop {
        drop(writer.await.unwrap());
        drop(rd);
        return None;
    }
    let closed =
        match tokio::time::timeout(CLOSE_WITHIN, fcgi::read_until_closed(&mut rd, CLOSE_WITHIN))
            .await
        {
            Ok(c) => c,
            Err(_) => return Some(format!("{}: still open after {CLOSE_WITHIN:?}", c.name)),
        };
    let _ = writer.await;
    let got = events(&closed.records);
    (got != c.expect).then(|| {
        format!(
            "{}: expected {:?}, got {:?} (reset: {})",
            c.name, c.expect, got, closed.reset
        )
    })
}

/// A good login on a fresh connection; panics unless `Auth-Status: OK`.
async fn assert_good_login(d: &Daemon, after: &str) {
    let mut s = connect(d).await;
    s.write_all(&good(1, 0)).await.unwrap();
    let r = fcgi::read_reply(&mut s, 1).await;
    assert_eq!(
        r.header("Auth-Status").as_deref(),
        Some("OK"),
        "good login after {after}: {:?}",
        String::from_utf8_lossy(&r.stdout)
    );
}

// ----------------------------------------------------------------- cases

fn ok(id: u16) -> Event {
    Event::Reply(id, Verdict::Ok)
}

fn refused(id: u16) -> Event {
    Event::Reply(id, Verdict::Refused)
}

/// Truncations of a valid request at every offset, each followed by EOF:
/// closed without a word (a partial request is never answered).
fn truncations() -> Vec<Case> {
    let w = good(1, 0);
    (0..w.len())
        .map(|k| {
            case(
                format!("truncated at {k}/{} then EOF", w.len()),
                w[..k].to_vec(),
                After::HalfClose,
                vec![],
            )
        })
        .collect()
}

/// Cases whose client stays silent: closed by the read timeout, no answer.
fn stalled() -> Vec<Case> {
    let w = good(1, 0);
    let mut cases: Vec<Case> = [0, 1, 7, 8, 9, 16, 17, 30, w.len() - 9, w.len() - 1]
        .into_iter()
        .map(|k| {
            case(
                format!("truncated at {k}/{} and held open", w.len()),
                w[..k].to_vec(),
                After::Hold,
                vec![],
            )
        })
        .collect();
    // A record header claiming 65535 bytes, fewer sent, held open.
    let mut wire = fcgi::begin(1, fcgi::RESPONDER, 0);
    wire.extend(fcgi::header(1, fcgi::PARAMS, 1, 0xFFFF, 0));
    wire.extend(vec![b'x'; 1000]);
    cases.push(case(
        "PARAMS claims 65535, 1000 sent, held open",
        wire,
        After::Hold,
        vec![],
    ));
    // Kept connection, one request answered, then a partial one held.
    let mut wire = good(1, fcgi::KEEP_CONN);
    wire.extend_from_slice(&good(2, 0)[..20]);
    cases.push(case(
        "answered, then a partial request held",
        wire,
        After::Hold,
        vec![ok(1)],
    ));
    cases
}

fn matrix() -> Vec<Case> {
    let mut cases = Vec::new();
    let overloaded = |id| vec![Event::End(id, fcgi::OVERLOADED)];

    // Record lengths that promise more than is sent.
    for ty in [fcgi::PARAMS, fcgi::STDIN] {
        let mut wire = fcgi::begin(1, fcgi::RESPONDER, 0);
        if ty == fcgi::STDIN {
            wire.extend(fcgi::params(1, &mail_pairs(b"alice", PASSWORD)));
        }
        wire.extend(fcgi::header(1, ty, 1, 0xFFFF, 255));
        wire.extend(vec![b'x'; 30_000]);
        cases.push(case(
            format!("type {ty} content length 65535, 30000 sent, EOF"),
            wire,
            After::HalfClose,
            vec![],
        ));
    }

    // Pair lengths up to 4 GiB (the top bit is the 4-byte marker, so 0xFFFFFFFF
    // claims 0x7FFFFFFF bytes). Short streams: malformed, closed unanswered.
    for field in [
        0x8000_0080u32,
        0x8001_0000,
        0xFFFF_FFF0,
        0x7FFF_FFFF,
        0xFFFF_FFFF,
    ] {
        for value_field in [false, true] {
            let content = if value_field {
                // Name length 1, value length from `field`.
                let mut v = vec![1u8];
                v.extend(field.to_be_bytes());
                v.extend_from_slice(b"Nvalue");
                v
            } else {
                claimed_pair(field, b"name")
            };
            let mut wire = fcgi::begin(1, fcgi::RESPONDER, 0);
            wire.extend(fcgi::stream(fcgi::PARAMS, 1, &content, 0xFFFF));
            wire.extend(fcgi::record(fcgi::STDIN, 1, b""));
            let which = if value_field { "value" } else { "name" };
            cases.push(case(
                format!("{which} length field {field:#010x}, short stream"),
                wire,
                After::HalfClose,
                vec![],
            ));
        }
        // The same claim followed by as much data as the sender likes: cut
        // off at the 64 KiB params limit with OVERLOADED.
        let mut content = claimed_pair(field, b"");
        content.resize(300_000, b'z');
        let mut wire = fcgi::begin(1, fcgi::RESPONDER, 0);
        wire.extend(params_records(1, &content));
        cases.push(case(
            format!("name length {field:#010x}, 300 kB follow"),
            wire,
            After::HalfClose,
            overloaded(1),
        ));
    }
    // A length field split across two PARAMS records is still checked.
    let mut wire = fcgi::begin(1, fcgi::RESPONDER, 0);
    wire.extend(fcgi::record(fcgi::PARAMS, 1, &[0xFF, 0xFF]));
    wire.extend(fcgi::record(fcgi::PARAMS, 1, &[0xFF, 0xFF, 0x00, b'a']));
    wire.extend(fcgi::record(fcgi::PARAMS, 1, b""));
    wire.extend(fcgi::record(fcgi::STDIN, 1, b""));
    cases.push(case(
        "4 GiB length split over records",
        wire,
        After::HalfClose,
        vec![],
    ));

    // A 1 MiB param value, and 100,000 tiny params: over the params limits.
    let big = vec![b'v'; 1 << 20];
    let mut pairs = mail_pairs(b"alice", PASSWORD);
    pairs.push((b"HTTP_X_BIG", &big));
    cases.push(case(
        "1 MiB param value",
        fcgi::request(1, 0, &pairs, b""),
        After::HalfClose,
        overloaded(1),
    ));
    let names: Vec<Vec<u8>> = (0..100_000u32)
        .map(|i| format!("P{}", i % 100).into_bytes())
        .collect();
    let many: Vec<(&[u8], &[u8])> = names.iter().map(|n| (n.as_slice(), &b""[..])).collect();
    let mut wire = fcgi::begin(1, fcgi::RESPONDER, 0);
    wire.extend(fcgi::stream(
        fcgi::PARAMS,
        1,
        &fcgi::encode_pairs(&many),
        0xFFFF,
    ));
    wire.extend(fcgi::record(fcgi::STDIN, 1, b""));
    cases.push(case(
        "100,000 params",
        wire,
        After::HalfClose,
        overloaded(1),
    ));
    // 600 params within the byte limit: over the count limit (512).
    let mut wire = fcgi::begin(1, fcgi::RESPONDER, 0);
    wire.extend(fcgi::stream(
        fcgi::PARAMS,
        1,
        &fcgi::encode_pairs(&many[..600]),
        0xFFFF,
    ));
    wire.extend(fcgi::record(fcgi::STDIN, 1, b""));
    cases.push(case("600 params", wire, After::HalfClose, overloaded(1)));
    // 1 MiB of STDIN.
    let mut wire = fcgi::begin(1, fcgi::RESPONDER, 0);
    wire.extend(fcgi::params(1, &mail_pairs(b"alice", PASSWORD)));
    wire.extend(fcgi::stream(fcgi::STDIN, 1, &big, 0xFFFF));
    cases.push(case("1 MiB stdin", wire, After::HalfClose, overloaded(1)));

    // NUL and non-UTF-8 in user and password: refused, never OK. nginx
    // %-escapes Auth-User/Auth-Pass, so %00 is what it would send for a NUL.
    let users: [&[u8]; 7] = [
        b"alice%00",
        b"alice\0",
        b"alice%00x",
        b"\0alice",
        b"ali\xffce",
        b"alice%ff",
        b"%c3%28",
    ];
    for u in users {
        cases.push(case(
            format!("user {:?}", String::from_utf8_lossy(u)),
            login(1, 0, u, PASSWORD),
            After::HalfClose,
            vec![refused(1)],
        ));
    }
    let passwords: [&[u8]; 9] = [
        b"wonderland%00",
        b"wonderland\0",
        b"wonder%00land",
        b"\0wonderland",
        b"wonderl\xffnd",
        b"wonderland%ff",
        b"%00",
        b"\0",
        b"",
    ];
    for p in passwords {
        cases.push(case(
            format!("password {:?}", String::from_utf8_lossy(p)),
            login(1, 0, b"alice", p),
            After::HalfClose,
            vec![refused(1)],
        ));
    }
    // The same over HTTP Basic (decoded bytes, no %-escaping), with a
    // control: the right credentials are accepted there.
    cases.push(case(
        "basic alice:wonderland (control)",
        basic(b"alice:wonderland"),
        After::HalfClose,
        vec![ok(1)],
    ));
    for up in [
        &b"alice\0:wonderland"[..],
        b"alice:wonderland\0",
        b"al\xffice:wonderland",
        b"alice:wonder\xffland",
        b"\0",
    ] {
        cases.push(case(
            format!("basic {:?}", String::from_utf8_lossy(up)),
            basic(up),
            After::HalfClose,
            vec![refused(1)],
        ));
    }
    for raw in [&b"Basic \xff\xfe\0"[..], b"\0", b"Basic %00"] {
        cases.push(case(
            format!("Authorization {:?}", String::from_utf8_lossy(raw)),
            basic_raw(raw),
            After::HalfClose,
            vec![refused(1)],
        ));
    }

    // Connections dropped mid-request (by the client, without reading).
    let w = good(1, 0);
    let mut mid_params = fcgi::begin(1, fcgi::RESPONDER, 0);
    mid_params.extend(params_records(
        1,
        &fcgi::encode_pairs(&mail_pairs(b"alice", PASSWORD)),
    ));
    let mut mid_stdin = fcgi::begin(1, fcgi::RESPONDER, 0);
    mid_stdin.extend(fcgi::params(1, &mail_pairs(b"alice", PASSWORD)));
    mid_stdin.extend(fcgi::record(fcgi::STDIN, 1, b"body"));
    for (name, wire) in [
        ("dropped mid-PARAMS", mid_params.clone()),
        ("dropped mid-STDIN", mid_stdin.clone()),
        ("dropped inside a record", w[..w.len() / 2].to_vec()),
        ("dropped before reading the reply", w.clone()),
    ] {
        cases.push(case(name, wire, After::Drop, vec![]));
    }
    cases.push(case(
        "mid-PARAMS then EOF",
        mid_params,
        After::HalfClose,
        vec![],
    ));
    cases.push(case(
        "mid-STDIN then EOF",
        mid_stdin,
        After::HalfClose,
        vec![],
    ));

    // ABORT_REQUEST: END_REQUEST(REQUEST_COMPLETE) per §5.4, no STDOUT.
    let pairs = mail_pairs(b"alice", PASSWORD);
    for keep in [0, fcgi::KEEP_CONN] {
        let follow = |mut wire: Vec<u8>| {
            if keep != 0 {
                wire.extend(good(2, 0));
            }
            wire
        };
        let expect = |e: Event| {
            let mut v = vec![e];
            if keep != 0 {
                v.push(ok(2));
            }
            v
        };
        let mut wire = fcgi::begin(1, fcgi::RESPONDER, keep);
        wire.extend(fcgi::abort(1));
        cases.push(case(
            format!("abort before params, keep={keep}"),
            follow(wire),
            After::HalfClose,
            expect(Event::End(1, fcgi::REQUEST_COMPLETE)),
        ));
        let mut wire = fcgi::begin(1, fcgi::RESPONDER, keep);
        wire.extend(params_records(1, &fcgi::encode_pairs(&pairs)));
        wire.extend(fcgi::abort(1));
        cases.push(case(
            format!("abort mid-params, keep={keep}"),
            follow(wire),
            After::HalfClose,
            expect(Event::End(1, fcgi::REQUEST_COMPLETE)),
        ));
        let mut wire = fcgi::begin(1, fcgi::RESPONDER, keep);
        wire.extend(fcgi::params(1, &pairs));
        wire.extend(fcgi::abort(1));
        // Late STDIN of the aborted request is ignored.
        wire.extend(fcgi::record(fcgi::STDIN, 1, b""));
        cases.push(case(
            format!("abort after params, keep={keep}"),
            follow(wire),
            After::HalfClose,
            expect(Event::End(1, fcgi::REQUEST_COMPLETE)),
        ));
    }
    // ABORT for an id that is not active (already answered, or never begun):
    // nothing to end, ignored.
    let mut wire = fcgi::abort(5);
    wire.extend(good(1, fcgi::KEEP_CONN));
    wire.extend(fcgi::abort(1));
    wire.extend(good(2, 0));
    cases.push(case(
        "abort for inactive ids",
        wire,
        After::HalfClose,
        vec![ok(1), ok(2)],
    ));

    // BEGIN_REQUEST on the management id 0: not a request; UNKNOWN_TYPE.
    let mut wire = fcgi::begin(0, fcgi::RESPONDER, 0);
    wire.extend(good(1, 0));
    cases.push(case(
        "BEGIN_REQUEST with id 0",
        wire,
        After::HalfClose,
        vec![Event::UnknownType(fcgi::BEGIN_REQUEST), ok(1)],
    ));
    // A whole request with id 0 (PARAMS, STDIN on id 0 too).
    let mut wire = login(0, 0, b"alice", PASSWORD);
    wire.extend(good(1, 0));
    cases.push(case(
        "whole request on id 0",
        wire,
        After::HalfClose,
        vec![
            Event::UnknownType(fcgi::BEGIN_REQUEST),
            Event::UnknownType(fcgi::PARAMS),
            Event::UnknownType(fcgi::PARAMS),
            Event::UnknownType(fcgi::STDIN),
            ok(1),
        ],
    ));
    // A second request id while one is in flight, its records interleaved.
    let mut wire = fcgi::begin(1, fcgi::RESPONDER, 0);
    wire.extend(fcgi::begin(2, fcgi::RESPONDER, 0));
    wire.extend(fcgi::params(2, &mail_pairs(b"alice", b"wrong")));
    wire.extend(fcgi::params(1, &pairs));
    wire.extend(fcgi::record(fcgi::STDIN, 2, b""));
    wire.extend(fcgi::record(fcgi::STDIN, 1, b""));
    cases.push(case(
        "second request id in flight",
        wire,
        After::HalfClose,
        vec![Event::End(2, fcgi::CANT_MPX_CONN), ok(1)],
    ));
    // The bad password of the refused id must not leak into the active one.
    let mut wire = fcgi::begin(1, fcgi::RESPONDER, 0);
    wire.extend(fcgi::begin(2, fcgi::RESPONDER, 0));
    wire.extend(fcgi::params(2, &mail_pairs(b"alice", PASSWORD)));
    wire.extend(fcgi::params(1, &mail_pairs(b"alice", b"wrong")));
    wire.extend(fcgi::record(fcgi::STDIN, 2, b""));
    wire.extend(fcgi::record(fcgi::STDIN, 1, b""));
    cases.push(case(
        "second request id carries the good password",
        wire,
        After::HalfClose,
        vec![Event::End(2, fcgi::CANT_MPX_CONN), refused(1)],
    ));
    // The same id begun twice: malformed, closed unanswered.
    let mut wire = fcgi::begin(1, fcgi::RESPONDER, 0);
    wire.extend(fcgi::begin(1, fcgi::RESPONDER, 0));
    wire.extend(fcgi::params(1, &pairs));
    wire.extend(fcgi::record(fcgi::STDIN, 1, b""));
    cases.push(case("BEGIN repeated", wire, After::HalfClose, vec![]));

    // Padding 255 on every record, and records of unknown types mid-request.
    let mut wire = fcgi::record_padded(fcgi::BEGIN_REQUEST, 1, &[0, 1, 0, 0, 0, 0, 0, 0], 255);
    wire.extend(fcgi::record_padded(
        fcgi::PARAMS,
        1,
        &fcgi::encode_pairs(&pairs),
        255,
    ));
    wire.extend(fcgi::record_padded(fcgi::PARAMS, 1, b"", 255));
    wire.extend(fcgi::record_padded(fcgi::STDIN, 1, b"", 255));
    cases.push(case("padding 255", wire, After::HalfClose, vec![ok(1)]));
    let mut wire = fcgi::begin(1, fcgi::RESPONDER, 0);
    wire.extend(fcgi::record_padded(42, 1, b"junk", 255));
    wire.extend(fcgi::record(0, 1, b""));
    wire.extend(fcgi::record(fcgi::DATA, 1, b"data"));
    wire.extend(fcgi::record(fcgi::STDOUT, 1, b"Auth-Status: OK\r\n\r\n"));
    wire.extend(fcgi::record(fcgi::END_REQUEST, 1, &[0; 8]));
    wire.extend(params_records(1, &fcgi::encode_pairs(&pairs)));
    wire.extend(fcgi::record(255, 1, &[0xAB; 300]));
    wire.extend(fcgi::record(fcgi::PARAMS, 1, b""));
    wire.extend(fcgi::record(99, 0, b""));
    wire.extend(fcgi::record(fcgi::GET_VALUES_RESULT, 1, b""));
    wire.extend(fcgi::record(fcgi::STDIN, 1, b""));
    cases.push(case(
        "unknown record types mid-request",
        wire,
        After::HalfClose,
        vec![Event::UnknownType(99), ok(1)],
    ));
    // Same with a wrong password: the injected STDOUT "OK" must not count.
    let mut wire = fcgi::begin(1, fcgi::RESPONDER, 0);
    wire.extend(fcgi::record(fcgi::STDOUT, 1, b"Auth-Status: OK\r\n\r\n"));
    wire.extend(fcgi::params(1, &mail_pairs(b"alice", b"wrong")));
    wire.extend(fcgi::record(fcgi::STDIN, 1, b""));
    cases.push(case(
        "client-sent STDOUT with a wrong password",
        wire,
        After::HalfClose,
        vec![refused(1)],
    ));
    // Version 0 and version 2 headers, and a BEGIN body that is too short.
    for v in [0u8, 2] {
        let mut wire = fcgi::header(v, fcgi::BEGIN_REQUEST, 1, 8, 0).to_vec();
        wire.extend([0, 1, 0, 0, 0, 0, 0, 0]);
        wire.extend(good(1, 0));
        cases.push(case(format!("version {v}"), wire, After::HalfClose, vec![]));
    }
    let mut wire = fcgi::record(fcgi::BEGIN_REQUEST, 1, &[0, 1, 0]);
    wire.extend(good(1, 0));
    cases.push(case(
        "BEGIN body of 3 bytes",
        wire,
        After::HalfClose,
        vec![],
    ));
    cases
}

/// A client sending a valid request one byte per second: cut off by the
/// read timeout long before it is complete, without an answer.
async fn slow_client(d: &Daemon) -> Result<usize, String> {
    let wire = good(1, 0);
    let s = connect(d).await;
    let (mut rd, mut wr) = s.into_split();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let dripper = tokio::spawn(async move {
        for b in wire {
            if wr.write_all(&[b]).await.is_err() {
                break;
            }
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let closed = fcgi::read_until_closed(&mut rd, Duration::from_secs(60)).await;
    dripper.abort();
    let sent = sent.load(Ordering::Relaxed);
    let total = good(1, 0).len();
    if !closed.records.is_empty() {
        return Err(format!("slow client got {:?}", closed.records));
    }
    // Closed while bytes were still to come: cut off, not served.
    if sent >= total {
        return Err(format!("slow client sent all {total} bytes"));
    }
    Ok(sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_matrix_against_the_daemon() {
    let mut d = start_daemon();
    let pid = d.pid();
    assert_good_login(&d, "start").await;
    let fd_base = settled_fd_count(pid).await;
    let rss_base = status_kib(pid, "VmRSS");
    eprintln!("baseline: fds {fd_base}, VmRSS {rss_base} kB");
    let mut problems = Vec::new();

    // 1. Every truncation of a valid request, then EOF.
    let mut n = 0;
    for c in truncations() {
        let name = c.name.clone();
        problems.extend(run_case(d.sock().to_owned(), c).await);
        assert_good_login(&d, &name).await;
        n += 1;
    }
    eprintln!("truncations: {n} cases");

    // 2. The matrix proper.
    let mut n = 0;
    for c in matrix() {
        let name = c.name.clone();
        problems.extend(run_case(d.sock().to_owned(), c).await);
        assert_good_login(&d, &name).await;
        d.assert_alive();
        n += 1;
    }
    let hwm = status_kib(pid, "VmHWM");
    eprintln!("matrix: {n} cases; VmHWM so far {hwm} kB");
    // 2 GiB claims, 1 MiB values, 100,000 params: none allocated its size.
    if hwm > MAX_HWM_KIB {
        problems.push(format!("VmHWM {hwm} kB after the matrix"));
    }

    // 3. Stalled and slow clients, all at once, while others are served.
    let stalled_cases = stalled();
    let n = stalled_cases.len();
    let d_ref = &d;
    let stalled = async {
        let tasks: Vec<_> = stalled_cases
            .into_iter()
            .map(|c| tokio::spawn(run_case(d_ref.sock().to_owned(), c)))
            .collect();
        let mut v = Vec::new();
        for t in tasks {
            v.push(t.await.unwrap());
        }
        v
    };
    let meanwhile = async {
        let mut served = 0;
        for i in 0..20 {
            assert_good_login(d_ref, &format!("meanwhile {i}")).await;
            served += 1;
        }
        served
    };
    let (stalled_problems, slow, served) = tokio::join!(stalled, slow_client(d_ref), meanwhile);
    problems.extend(stalled_problems.into_iter().flatten());
    match slow {
        Ok(sent) => eprintln!("slow client cut off after {sent} bytes"),
        Err(e) => problems.push(e),
    }
    eprintln!("stalled: {n} cases; {served} good logins served meanwhile");

    // 4. Clients that never read their answers: pipelined keep-alive logins,
    //    and management records that each get an UNKNOWN_TYPE back.
    let mut unknown = Vec::new();
    for _ in 0..64 {
        unknown.extend(fcgi::record(99, 0, b""));
    }
    for (name, unit) in [
        ("pipelined logins, never read", good(1, fcgi::KEEP_CONN)),
        ("UNKNOWN_TYPE answers, never read", unknown),
    ] {
        match never_reads(d.sock().to_owned(), name, unit).await {
            Ok(sent) => eprintln!("{name}: closed after {sent} bytes sent"),
            Err(e) => problems.push(e),
        }
        assert_good_login(&d, name).await;
    }

    // 5. 1,100 connections at once, over the 1,024 cap.
    match connection_flood(&d, 1100, 1024).await {
        Ok((refused, oks)) => {
            eprintln!("flood of 1100: {refused} closed at the cap, {oks} answered OK")
        }
        Err(e) => problems.push(e),
    }
    assert_good_login(&d, "the flood").await;

    // After everything: alive, fds back at baseline, bounded memory.
    d.assert_alive();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut fds = fd_count(pid);
    while fds > fd_base + 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        fds = fd_count(pid);
    }
    let rss = status_kib(pid, "VmRSS");
    let hwm = status_kib(pid, "VmHWM");
    eprintln!("after: fds {fds} (baseline {fd_base}), VmRSS {rss} kB, VmHWM {hwm} kB");
    if fds > fd_base + 2 {
        problems.push(format!("fds {fds}, baseline {fd_base}"));
    }
    if hwm > MAX_HWM_KIB {
        problems.push(format!("VmHWM {hwm} kB > {MAX_HWM_KIB} kB"));
    }
    let log = d.log();
    assert!(
        !log.contains("wonderland"),
        "a password reached the log:\n{log}"
    );
    assert!(problems.is_empty(), "{problems:#?}\n--- daemon log:\n{log}");
}

/// A client that sends and sends but never reads: `unit` (records that each
/// provoke an answer) repeated. The server must not buffer its answers
/// without bound: once the socket is full its write times out and it closes,
/// which the client sees as a failed write well before `MAX_SENT`.
async fn never_reads(sock: PathBuf, name: &str, unit: Vec<u8>) -> Result<usize, String> {
    const MAX_SENT: usize = 256 << 20;
    let mut s = UnixStream::connect(&sock).await.unwrap();
    let mut block = Vec::new();
    while block.len() < 64 * 1024 {
        block.extend_from_slice(&unit);
    }
    let mut sent = 0;
    let r = tokio::time::timeout(Duration::from_secs(60), async {
        while sent < MAX_SENT {
            if s.write_all(&block).await.is_err() {
                return true;
            }
            sent += block.len();
        }
        false
    })
    .await;
    match r {
        Ok(true) => Ok(sent),
        Ok(false) => Err(format!("{name}: server took {sent} bytes without closing")),
        Err(_) => Err(format!("{name}: writes blocked for 60 s without a close")),
    }
}

/// Opens `n` connections (over the cap) before sending anything. Those over
/// the cap must be closed at once, unanswered: wait (10 s at most) until the
/// server has closed `n - cap` of them. Then a good login on every other one:
/// each is answered OK or (if the read timeout for a silent new connection
/// struck first on a slow machine) closed unanswered; nothing else.
async fn connection_flood(d: &Daemon, n: usize, cap: usize) -> Result<(usize, usize), String> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let s = UnixStream::connect(d.sock())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        conns.push(Some(s));
    }
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused < n - cap {
        if Instant::now() > deadline {
            return Err(format!("only {refused} of {n} closed at the cap of {cap}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        for slot in conns.iter_mut() {
            let mut buf = [0u8; 1];
            if let Some(s) = slot {
                match s.try_read(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Ok(0) => {
                        refused += 1;
                        *slot = None;
                    }
                    Ok(_) => return Err("a record before any request".into()),
                    Err(_) => {
                        refused += 1;
                        *slot = None;
                    }
                }
            }
        }
    }
    let tasks: Vec<_> = conns
        .into_iter()
        .flatten()
        .map(|mut s| {
            tokio::spawn(async move {
                let _ = s.write_all(&good(1, 0)).await;
                let closed = fcgi::read_until_closed(&mut s, CLOSE_WITHIN).await;
                events(&closed.records)
            })
        })
        .collect();
    let mut oks = 0;
    for t in tasks {
        let ev = t.await.unwrap();
        if ev == vec![ok(1)] {
            oks += 1;
        } else if !ev.is_empty() {
            return Err(format!("flood connection got {ev:?}"));
        }
    }
    if oks == 0 {
        return Err("no connection of the flood was served".into());
    }
    Ok((refused, oks))
}
