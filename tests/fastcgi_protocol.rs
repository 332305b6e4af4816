//! The FastCGI transport end to end: `listen::open` + `server::run` in-process
//! on a temp-dir unix socket, driven by the independent client in
//! `common::fcgi`. Covers the responder protocol (FastCGI 1.0 §4–§6), the
//! limits in `fastcgi::Limits`, graceful shutdown, and `listen` specs.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fcgi::{self, Rec};
use common::proc::wait_until_async;
use nginx_auth_fcgi::fastcgi::{Handler, Limits, Request, Response};
use nginx_auth_fcgi::listen::{self, ListenError, ListenSpec, Listener, SocketOptions};
use nginx_auth_fcgi::server;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Records the largest single allocation the process ever asks for, so a test
/// can prove a hostile length on the wire did not turn into a huge buffer.
struct PeakAlloc;

static LARGEST_ALLOC: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the only addition is an atomic counter.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST_ALLOC.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST_ALLOC.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST_ALLOC.fetch_max(new_size, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: PeakAlloc = PeakAlloc;

/// A password-like value that must never show up in a log line.
const SECRET: &[u8] = b"pw-Sekr1t-marker";

/// Captures every log line of this test binary.
struct CaptureLog;
static LOG_LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl log::Log for CaptureLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let line = format!("{} {}", record.level(), record.args());
        LOG_LINES.lock().unwrap().push(line);
    }
    fn flush(&self) {}
}

fn init_logging() {
    static LOGGER: CaptureLog = CaptureLog;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}

/// Test handler: echoes `ECHO`, reports what it received, optionally sleeps
/// (`SLEEP_MS`, counted in `sleeping` meanwhile).
#[derive(Default)]
struct Echo {
    sleeping: Arc<AtomicUsize>,
}

impl Handler for Echo {
    async fn handle(&self, req: Request) -> Response {
        if let Some(ms) = req.params.get("SLEEP_MS") {
            let ms: u64 = std::str::from_utf8(ms).unwrap().parse().unwrap();
            self.sleeping.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            self.sleeping.fetch_sub(1, Ordering::SeqCst);
        }
        let mut out = b"Status: 200 OK\r\nX-Echo: ".to_vec();
        out.extend_from_slice(req.params.get("ECHO").unwrap_or(b"-"));
        out.extend_from_slice(
            format!(
                "\r\nX-Params: {}\r\nX-Echo-Count: {}\r\nX-Stdin: {}\r\n\r\n",
                req.params.len(),
                req.params.count("ECHO"),
                req.stdin.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(&req.stdin);
        Response {
            stdout: out,
            app_status: 7,
        }
    }
}

struct TestServer {
    path: PathBuf,
    /// Requests in the handler's `SLEEP_MS` sleep.
    sleeping: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

fn test_limits() -> Limits {
    Limits {
        read_timeout: Duration::from_secs(3),
        ..Limits::default()
    }
}

/// `server::run` with `echo` on `listeners` until the sender fires.
fn serve_echo(
    listeners: Vec<Listener>,
    echo: Echo,
    limits: Limits,
) -> (oneshot::Sender<()>, JoinHandle<io::Result<()>>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server::run(listeners, Arc::new(echo), limits, async {
        let _ = stopped.await;
    }));
    (stop, task)
}

async fn start(limits: Limits) -> TestServer {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run").join("fcgi.sock");
    let listeners =
        listen::open(&[ListenSpec::Unix(path.clone())], &SocketOptions::default()).unwrap();
    let sleeping = Arc::new(AtomicUsize::new(0));
    let echo = Echo {
        sleeping: sleeping.clone(),
    };
    let (stop, task) = serve_echo(listeners, echo, limits);
    TestServer {
        path,
        sleeping,
        _dir: dir,
        stop: Some(stop),
        task,
    }
}

impl TestServer {
    async fn connect(&self) -> UnixStream {
        UnixStream::connect(&self.path).await.unwrap()
    }

    /// Signals shutdown and waits for `run` to return.
    async fn stop(self) -> io::Result<()> {
        self.stop_keeping_dir().await.0
    }

    /// Like [`TestServer::stop`], but hands back the temp dir so the test can
    /// look at what `run` left in it.
    async fn stop_keeping_dir(mut self) -> (io::Result<()>, tempfile::TempDir) {
        let _ = self.stop.take().unwrap().send(());
        let result = tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .expect("server::run did not return after shutdown")
            .unwrap();
        (result, self._dir)
    }
}

fn pairs<'a>(extra: &[(&'a [u8], &'a [u8])]) -> Vec<(&'a [u8], &'a [u8])> {
    let mut p: Vec<(&[u8], &[u8])> = vec![
        (b"REQUEST_METHOD", b"GET"),
        (b"HTTP_AUTH_USER", b"alice"),
        (b"HTTP_AUTH_PASS", SECRET),
    ];
    p.extend_from_slice(extra);
    p
}

async fn send(s: &mut UnixStream, bytes: &[u8]) {
    s.write_all(bytes).await.unwrap();
}

/// Sends one complete request and reads its reply.
async fn roundtrip(s: &mut UnixStream, id: u16, flags: u8, echo: &str) -> fcgi::Reply {
    let echo_pair = [(&b"ECHO"[..], echo.as_bytes())];
    send(s, &fcgi::request(id, flags, &pairs(&echo_pair), b"")).await;
    fcgi::read_reply(s, id).await
}

const CLOSE_WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn single_request() {
    let srv = start(test_limits()).await;
    let mut s = srv.connect().await;
    let r = roundtrip(&mut s, 1, 0, "hello").await;
    assert_eq!(r.header("Status").as_deref(), Some("200 OK"));
    assert_eq!(r.header("X-Echo").as_deref(), Some("hello"));
    assert_eq!(r.header("X-Params").as_deref(), Some("4"));
    assert_eq!(r.app_status, 7);
    assert_eq!(r.protocol_status, fcgi::REQUEST_COMPLETE);
    // Data record(s) plus the empty STDOUT terminator.
    assert_eq!(r.stdout_records, 2);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn request_id_is_echoed() {
    let srv = start(test_limits()).await;
    let mut s = srv.connect().await;
    let r = roundtrip(&mut s, 0xBEEF, 0, "id").await;
    assert_eq!(r.id, 0xBEEF);
    assert_eq!(r.header("X-Echo").as_deref(), Some("id"));
}

#[tokio::test]
async fn keep_conn_serves_three_requests_on_one_connection() {
    let srv = start(test_limits()).await;
    let mut s = srv.connect().await;
    for (id, echo) in [(1, "one"), (2, "two"), (1, "three")] {
        let r = roundtrip(&mut s, id, fcgi::KEEP_CONN, echo).await;
        assert_eq!(r.header("X-Echo").as_deref(), Some(echo));
        assert_eq!(r.protocol_status, fcgi::REQUEST_COMPLETE);
    }
    // Still open: a management query is answered on the same connection.
    send(&mut s, &fcgi::get_values(&["FCGI_MPXS_CONNS"])).await;
    assert_eq!(
        fcgi::expect_record(&mut s).await.ty,
        fcgi::GET_VALUES_RESULT
    );
}

#[tokio::test]
async fn without_keep_conn_server_closes_after_end_request() {
    let srv = start(test_limits()).await;
    let mut s = srv.connect().await;
    let r = roundtrip(&mut s, 1, 0, "bye").await;
    assert_eq!(r.header("X-Echo").as_deref(), Some("bye"));
    let closed = fcgi::read_until_closed(&mut s, CLOSE_WAIT).await;
    assert!(closed.records.is_empty(), "{:?}", closed.records);
    assert!(!closed.reset, "expected a clean EOF");
}

#[tokio::test]
async fn params_split_over_records_with_a_straddling_pair() {
    let srv = start(test_limits()).await;
    let mut s = srv.connect().await;
    let long = vec![b'L'; 300]; // needs a 4-byte value length
    let mut stream = fcgi::encode_pairs(&pairs(&[(b"ECHO", &long), (b"ECHO", b"second")]));
    let extra = fcgi::encode_pairs(&[(b"TAIL", b"x")]);
    stream.extend_from_slice(&extra);
    // Cut points inside the ECHO pair's 4-byte length and inside its value.
    let echo_at = stream.windows(4).position(|w| w == b"ECHO").unwrap() - 5;
    let cuts = [
        0,
        3,
        echo_at + 2,
        echo_at + 100,
        stream.len() - 2,
        stream.len(),
    ];
    let mut wire = fcgi::begin(1, fcgi::RESPONDER, 0);
    for (i, w) in cuts.windows(2).enumerate() {
        let padding = [0u8, 255, 1, 7, 8][i];
        wire.extend(fcgi::record_padded(
            fcgi::PARAMS,
            1,
            &stream[w[0]..w[1]],
            padding,
        ));
    }
    wire.extend(fcgi::record(fcgi::PARAMS, 1, b""));
    wire.extend(fcgi::record(fcgi::STDIN, 1, b""));
    send(&mut s, &wire).await;
    let r = fcgi::read_reply(&mut s, 1).await;
    assert_eq!(r.header("X-Echo"), Some("L".repeat(300)));
    assert_eq!(r.header("X-Echo-Count").as_deref(), Some("2"));
    assert_eq!(r.header("X-Params").as_deref(), Some("6"));
}

#[tokio::test]
async fn empty_stdin_completes_request_despite_content_length() {
    // auth_request subrequests: CONTENT_LENGTH is the original request's, STDIN
    // is only the terminator. The reply must not wait for 11 bytes.
    let srv = start(test_limits()).await;
    let mut s = srv.connect().await;
    let p = pairs(&[(b"CONTENT_LENGTH", b"11"), (b"ECHO", b"sub")]);
    send(&mut s, &fcgi::request(1, 0, &p, b"")).await;
    let t0 = Instant::now();
    let r = fcgi::read_reply(&mut s, 1).await;
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(r.header("X-Stdin").as_deref(), Some("0"));
}

#[tokio::test]
async fn stdin_over_several_records_is_delivered() {
    let srv = start(test_limits()).await;
    let mut s = srv.connect().await;
    let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let mut wire = fcgi::begin(1, fcgi::RESPONDER, 0);
    wire.extend(fcgi::params(1, &pairs(&[])));
    wire.extend(fcgi::stream(fcgi::STDIN, 1, &body, 1000));
    send(&mut s, &wire).await;
    let r = fcgi::read_reply(&mut s, 1).await;
    assert_eq!(r.header("X-Stdin").as_deref(), Some("5000"));
    assert_eq!(r.body(), &body[..]);
}

#[tokio::test]
async fn second_empty_stdin_like_fastcgi_client_is_ignored() {
    let srv = start(test_limits()).await;
    let mut s = srv.connect().await;
    let mut wire = fcgi::request(1, fcgi::KEEP_CONN, &pairs(&[(b"ECHO", b"a")]), b"");
    wire.extend(fcgi::record(fcgi::STDIN, 1, b""));
    send(&mut s, &wire).await;
    assert_eq!(
        fcgi::read_reply(&mut s, 1)
            .await
            .header("X-Echo")
            .as_deref(),
        Some("a")
    );
    let r = roundtrip(&mut s, 1, fcgi::KEEP_CONN, "b").await;
    assert_eq!(r.header("X-Echo").as_deref(), Some("b"));
}

#[tokio::test]
async fn get_values_reports_limits_and_no_multiplexing() {
    let srv = start(Limits {
        max_connections: 17,
        ..test_limits()
    })
    .await;
    let mut s = srv.connect().await;
    send(
        &mut s,
        &fcgi::get_values(&[
            "FCGI_MAX_CONNS",
            "FCGI_MAX_REQS",
            "NOT_A_VARIABLE",
            "FCGI_MPXS_CONNS",
        ]),
    )
    .await;
    let rec = fcgi::expect_record(&mut s).await;
    assert_eq!((rec.ty, rec.id), (fcgi::GET_VALUES_RESULT, 0));
    let got = fcgi::decode_pairs(&rec.content);
    let want: Vec<(Vec<u8>, Vec<u8>)> = [
        ("FCGI_MAX_CONNS", "17"),
        ("FCGI_MAX_REQS", "17"),
        ("FCGI_MPXS_CONNS", "0"),
    ]
    .iter()
    .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
    .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn unknown_management_type_gets_unknown_type() {
    let srv = start(test_limits()).await;
    let mut s = srv.connect().await;
    send(&mut s, &fcgi::record(42, 0, b"whatever")).await;
    let rec = fcgi::expect_record(&mut s).await;
    assert_eq!((rec.ty, rec.id), (fcgi::UNKNOWN_TYPE, 0));
    assert_eq!(rec.content, [42, 0, 0, 0, 0, 0, 0, 0]);
    // The connection goes on.
    let r = roundtrip(&mut s, 1, 0, "after").await;
    assert_eq!(r.header("X-Echo").as_deref(), Some("after"));
}

#[tokio::test]
async fn authorizer_role_gets_unknown_role() {
    let srv = start(test_limits()).await;
    let mut s = srv.connect().await;
    // With KEEP_CONN the connection stays usable.
    let mut wire = fcgi::begin(5, fcgi::AUTHORIZER, fcgi::KEEP_CONN);
    wire.extend(fcgi::params(5, &pairs(&[])));
    wire.extend(fcgi::record(fcgi::STDIN, 5, b""));
    send(&mut s, &wire).await;
    let rec = fcgi::expect_record(&mut s).await;
    assert_eq!((rec.ty, rec.id), (fcgi::END_REQUEST, 5));
    assert_eq!(
        fcgi::end_request_body(&rec.content),
        (0, fcgi::UNKNOWN_ROLE)
    );
    let r = roundtrip(&mut s, 6, fcgi::KEEP_CONN, "next").await;
    assert_eq!(r.header("X-Echo").as_deref(), Some("next"));

    // Without KEEP_CONN the request has ended, so the connection closes.
    let mut s = srv.connect().await;
    send(&mut s, &fcgi::begin(1, fcgi::FILTER, 0)).await;
    let closed = fcgi::read_until_closed(&mut s, CLOSE_WAIT).await;
    assert_eq!(closed.records.len(), 1);
    assert_eq!(
        fcgi::end_request_body(&closed.records[0].content),
        (0, fcgi::UNKNOWN_ROLE)
    );
}

#[tokio::test]
async fn abort_request_ends_it_and_connection_continues() {
    let srv = start(test_limits()).await;
    let mut s = srv.connect().await;
    let mut wire = fcgi::begin(3, fcgi::RESPONDER, fcgi::KEEP_CONN);
    wire.extend(fcgi::record(
        fcgi::PARAMS,
        3,
        &fcgi::encode_pairs(&pairs(&[(b"ECHO", b"never")])),
    ));
    wire.extend(fcgi::abort(3));
    send(&mut s, &wire).await;
    let rec = fcgi::expect_record(&mut s).await;
    assert_eq!(
        (rec.ty, rec.id),
        (fcgi::END_REQUEST, 3),
        "no STDOUT for an aborted request"
    );
    assert_eq!(
        fcgi::end_request_body(&rec.content),
        (0, fcgi::REQUEST_COMPLETE)
    );
    // Late records of the aborted request are ignored, the next one is served.
    send(&mut s, &fcgi::record(fcgi::PARAMS, 3, b"")).await;
    let r = roundtrip(&mut s, 4, fcgi::KEEP_CONN, "fresh").await;
    assert_eq!(r.header("X-Echo").as_deref(), Some("fresh"));
}

#[tokio::test]
async fn second_begin_while_active_gets_cant_mpx_conn() {
    let srv = start(test_limits()).await;
    let mut s = srv.connect().await;
    let mut wire = fcgi::begin(1, fcgi::RESPONDER, fcgi::KEEP_CONN);
    wire.extend(fcgi::begin(2, fcgi::RESPONDER, fcgi::KEEP_CONN));
    send(&mut s, &wire).await;
    let rec = fcgi::expect_record(&mut s).await;
    assert_eq!((rec.ty, rec.id), (fcgi::END_REQUEST, 2));
    assert_eq!(
        fcgi::end_request_body(&rec.content),
        (0, fcgi::CANT_MPX_CONN)
    );
    // Request 1 is unaffected; records for refused id 2 are ignored.
    let mut rest = fcgi::params(1, &pairs(&[(b"ECHO", b"first")]));
    rest.extend(fcgi::params(2, &pairs(&[])));
    rest.extend(fcgi::record(fcgi::STDIN, 1, b""));
    send(&mut s, &rest).await;
    let r = fcgi::read_reply(&mut s, 1).await;
    assert_eq!(r.header("X-Echo").as_deref(), Some("first"));
}

#[tokio::test]
async fn oversized_params_close_connection_and_others_are_served() {
    let srv = start(test_limits()).await;
    let s = srv.connect().await;
    let (mut rd, mut wr) = s.into_split();
    // 1 MiB of params in 32 KiB records; the server stops at 64 KiB.
    let mut wire = fcgi::begin(1, fcgi::RESPONDER, 0);
    let big = vec![b'p'; 1 << 20];
    wire.extend(fcgi::params(
        1,
        &[(b"HTTP_AUTH_PASS", SECRET), (b"BIG", &big)],
    ));
    let writer = tokio::spawn(async move {
        // Fails with EPIPE once the server has closed; that is expected.
        for chunk in wire.chunks(32 * 1024) {
            if wr.write_all(chunk).await.is_err() {
                break;
            }
        }
    });
    let closed = fcgi::read_until_closed(&mut rd, CLOSE_WAIT).await;
    let _ = writer.await;
    assert_eq!(closed.records.len(), 1, "{:?}", closed.records);
    let rec: &Rec = &closed.records[0];
    assert_eq!((rec.ty, rec.id), (fcgi::END_REQUEST, 1));
    assert_eq!(fcgi::end_request_body(&rec.content), (0, fcgi::OVERLOADED));

    let mut s2 = srv.connect().await;
    let r = roundtrip(&mut s2, 1, 0, "still-up").await;
    assert_eq!(r.header("X-Echo").as_deref(), Some("still-up"));
}

#[tokio::test]
async fn too_many_params_answer_overloaded() {
    let srv = start(Limits {
        max_params_count: 5,
        ..test_limits()
    })
    .await;
    let mut s = srv.connect().await;
    let names: Vec<String> = (0..6).map(|i| format!("P{i}")).collect();
    let many: Vec<(&[u8], &[u8])> = names.iter().map(|n| (n.as_bytes(), SECRET)).collect();
    send(&mut s, &fcgi::request(1, fcgi::KEEP_CONN, &many, b"")).await;
    let closed = fcgi::read_until_closed(&mut s, CLOSE_WAIT).await;
    assert_eq!(closed.records.len(), 1);
    assert_eq!(
        fcgi::end_request_body(&closed.records[0].content),
        (0, fcgi::OVERLOADED)
    );
}

#[tokio::test]
async fn oversized_stdin_answers_overloaded() {
    let srv = start(Limits {
        max_stdin_bytes: 1000,
        ..test_limits()
    })
    .await;
    let mut s = srv.connect().await;
    let mut wire = fcgi::begin(9, fcgi::RESPONDER, fcgi::KEEP_CONN);
    wire.extend(fcgi::params(9, &pairs(&[])));
    wire.extend(fcgi::stream(fcgi::STDIN, 9, &[1u8; 1001], 600));
    send(&mut s, &wire).await;
    let closed = fcgi::read_until_closed(&mut s, CLOSE_WAIT).await;
    assert_eq!(closed.records.len(), 1);
    assert_eq!(closed.records[0].id, 9);
    assert_eq!(
        fcgi::end_request_body(&closed.records[0].content),
        (0, fcgi::OVERLOADED)
    );
}

#[tokio::test]
async fn huge_pair_length_closes_without_huge_allocation() {
    let srv = start(test_limits()).await;
    let mut s = srv.connect().await;
    // Name length 0xFFFFFFFF → 2^31 - 1 bytes claimed, 1 byte present.
    let mut wire = fcgi::begin(1, fcgi::RESPONDER, 0);
    wire.extend(fcgi::record(
        fcgi::PARAMS,
        1,
        &[0xFF, 0xFF, 0xFF, 0xFF, 0x01, b'x'],
    ));
    wire.extend(fcgi::record(fcgi::PARAMS, 1, b""));
    wire.extend(fcgi::record(fcgi::STDIN, 1, b""));
    send(&mut s, &wire).await;
    let closed = fcgi::read_until_closed(&mut s, CLOSE_WAIT).await;
    assert!(closed.records.is_empty(), "{:?}", closed.records);
    let largest = LARGEST_ALLOC.load(Ordering::Relaxed);
    assert!(largest < 64 << 20, "largest allocation {largest} bytes");

    let mut s2 = srv.connect().await;
    assert_eq!(
        roundtrip(&mut s2, 1, 0, "ok")
            .await
            .header("X-Echo")
            .as_deref(),
        Some("ok")
    );
}

#[tokio::test]
async fn truncated_record_then_eof_leaves_others_unaffected() {
    let srv = start(test_limits()).await;
    // A kept connection in the middle of its own request...
    let mut busy = srv.connect().await;
    send(&mut busy, &fcgi::begin(1, fcgi::RESPONDER, fcgi::KEEP_CONN)).await;
    // ...while another peer sends half a record and hangs up.
    let mut bad = srv.connect().await;
    let half = fcgi::params(1, &pairs(&[]));
    send(&mut bad, &fcgi::begin(1, fcgi::RESPONDER, 0)).await;
    send(&mut bad, &half[..11]).await;
    drop(bad);
    tokio::time::sleep(Duration::from_millis(50)).await;

    let mut rest = fcgi::params(1, &pairs(&[(b"ECHO", b"busy")]));
    rest.extend(fcgi::record(fcgi::STDIN, 1, b""));
    send(&mut busy, &rest).await;
    assert_eq!(
        fcgi::read_reply(&mut busy, 1)
            .await
            .header("X-Echo")
            .as_deref(),
        Some("busy")
    );
    let mut fresh = srv.connect().await;
    assert_eq!(
        roundtrip(&mut fresh, 1, 0, "fresh")
            .await
            .header("X-Echo")
            .as_deref(),
        Some("fresh")
    );
}

#[tokio::test]
async fn version_2_record_closes_connection() {
    let srv = start(test_limits()).await;
    let mut s = srv.connect().await;
    let mut wire = fcgi::header(2, fcgi::BEGIN_REQUEST, 1, 8, 0).to_vec();
    wire.extend_from_slice(&[0, 1, 1, 0, 0, 0, 0, 0]);
    send(&mut s, &wire).await;
    let closed = fcgi::read_until_closed(&mut s, CLOSE_WAIT).await;
    assert!(closed.records.is_empty(), "{:?}", closed.records);

    // Same after a valid request on a kept connection.
    let mut s = srv.connect().await;
    assert_eq!(
        roundtrip(&mut s, 1, fcgi::KEEP_CONN, "v1")
            .await
            .protocol_status,
        0
    );
    send(&mut s, &fcgi::header(2, fcgi::GET_VALUES, 0, 0, 0)).await;
    let closed = fcgi::read_until_closed(&mut s, CLOSE_WAIT).await;
    assert!(closed.records.is_empty());
}

#[tokio::test]
async fn stalled_request_is_closed_after_read_timeout() {
    let srv = start(Limits {
        read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(60),
        ..Limits::default()
    })
    .await;
    // Stalls inside a PARAMS record of a begun request.
    let mut s = srv.connect().await;
    let mut wire = fcgi::begin(1, fcgi::RESPONDER, 0);
    wire.extend_from_slice(&fcgi::header(1, fcgi::PARAMS, 1, 100, 0));
    wire.extend_from_slice(&[0u8; 10]);
    send(&mut s, &wire).await;
    let t0 = Instant::now();
    let closed = fcgi::read_until_closed(&mut s, CLOSE_WAIT).await;
    let waited = t0.elapsed();
    assert!(closed.records.is_empty());
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );

    // A connection that never sends anything gets read_timeout to start.
    let mut s = srv.connect().await;
    let t0 = Instant::now();
    fcgi::read_until_closed(&mut s, CLOSE_WAIT).await;
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "silent connection closed after {waited:?}"
    );

    // A half-sent header on an otherwise idle connection is held to
    // read_timeout too, not to the 60 s idle timeout.
    let mut s = srv.connect().await;
    send(&mut s, &fcgi::header(1, fcgi::BEGIN_REQUEST, 1, 8, 0)[..4]).await;
    let t0 = Instant::now();
    fcgi::read_until_closed(&mut s, CLOSE_WAIT).await;
    assert!(t0.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn idle_kept_connection_is_closed_after_idle_timeout() {
    let srv = start(Limits {
        idle_timeout: Duration::from_millis(300),
        ..test_limits()
    })
    .await;
    let mut s = srv.connect().await;
    roundtrip(&mut s, 1, fcgi::KEEP_CONN, "x").await;
    let t0 = Instant::now();
    let closed = fcgi::read_until_closed(&mut s, CLOSE_WAIT).await;
    assert!(closed.records.is_empty());
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once() {
    let srv = start(Limits {
        max_connections: 2,
        ..test_limits()
    })
    .await;
    let mut c1 = srv.connect().await;
    let mut c2 = srv.connect().await;
    let mut c3 = srv.connect().await;
    let closed = fcgi::read_until_closed(&mut c3, CLOSE_WAIT).await;
    assert!(closed.records.is_empty());
    assert_eq!(
        roundtrip(&mut c1, 1, fcgi::KEEP_CONN, "c1")
            .await
            .header("X-Echo")
            .as_deref(),
        Some("c1")
    );
    assert_eq!(
        roundtrip(&mut c2, 1, fcgi::KEEP_CONN, "c2")
            .await
            .header("X-Echo")
            .as_deref(),
        Some("c2")
    );

    // Once one ends, a new connection gets its slot.
    drop(c1);
    let deadline = Instant::now() + CLOSE_WAIT;
    loop {
        let mut c4 = srv.connect().await;
        let wire = fcgi::request(1, 0, &pairs(&[(b"ECHO", b"c4")]), b"");
        if c4.write_all(&wire).await.is_ok() {
            if let Ok(Ok(Some(rec))) =
                tokio::time::timeout(Duration::from_secs(1), fcgi::read_record(&mut c4)).await
            {
                assert_eq!(rec.ty, fcgi::STDOUT);
                break;
            }
        }
        assert!(Instant::now() < deadline, "slot was never released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_lets_in_flight_request_finish_and_closes_idle_ones() {
    let srv = start(test_limits()).await;
    let path = srv.path.clone();
    let mut idle = srv.connect().await;
    roundtrip(&mut idle, 1, fcgi::KEEP_CONN, "warm").await;
    let mut busy = srv.connect().await;
    let p = pairs(&[(b"ECHO", b"slow"), (b"SLEEP_MS", b"1500")]);
    send(&mut busy, &fcgi::request(1, fcgi::KEEP_CONN, &p, b"")).await;
    let sleeping = srv.sleeping.clone();
    wait_until_async("the slow request in its handler", CLOSE_WAIT, || {
        let sleeping = sleeping.clone();
        async move { sleeping.load(Ordering::SeqCst) == 1 }
    })
    .await;

    let t0 = Instant::now();
    let stopping = tokio::spawn(srv.stop_keeping_dir());
    let closed = fcgi::read_until_closed(&mut idle, CLOSE_WAIT).await;
    assert!(closed.records.is_empty());
    let idle_closed_after = t0.elapsed();
    assert!(
        idle_closed_after < Duration::from_millis(1000),
        "{idle_closed_after:?}"
    );

    let r = fcgi::read_reply(&mut busy, 1).await;
    assert_eq!(r.header("X-Echo").as_deref(), Some("slow"));
    assert!(t0.elapsed() > idle_closed_after);
    // KEEP_CONN notwithstanding, the connection closes after the answer.
    fcgi::read_until_closed(&mut busy, CLOSE_WAIT).await;

    let (result, dir) = stopping.await.unwrap();
    result.expect("run returned an error");
    assert!(dir.path().join("run").is_dir());
    assert!(!path.exists(), "socket file left behind");
    assert!(UnixStream::connect(&path).await.is_err());
}

#[tokio::test]
async fn tcp_listener_serves_requests() {
    init_logging();
    let listeners = listen::open(
        &["tcp:127.0.0.1:0".parse::<ListenSpec>().unwrap()],
        &SocketOptions::default(),
    )
    .unwrap();
    let addr = match &listeners[0] {
        Listener::Tcp(l) => l.local_addr().unwrap(),
        other => panic!("expected tcp, got {other}"),
    };
    let (stop, task) = serve_echo(listeners, Echo::default(), test_limits());
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&fcgi::request(1, 0, &pairs(&[(b"ECHO", b"tcp")]), b""))
        .await
        .unwrap();
    let r = fcgi::read_reply(&mut s, 1).await;
    assert_eq!(r.header("X-Echo").as_deref(), Some("tcp"));
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn listen_fd_adopts_an_inherited_unix_listener() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inherited.sock");
    let std_listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let fd = std_listener.into_raw_fd();
    let spec: ListenSpec = format!("fd:{fd}").parse().unwrap();
    let listeners = listen::open(&[spec], &SocketOptions::default()).unwrap();
    assert!(matches!(listeners[0], Listener::Unix(_)));
    assert!(listeners[0].to_string().ends_with("inherited.sock"));

    let (stop, task) = serve_echo(listeners, Echo::default(), test_limits());
    let mut s = UnixStream::connect(&path).await.unwrap();
    assert_eq!(
        roundtrip(&mut s, 1, 0, "fd")
            .await
            .header("X-Echo")
            .as_deref(),
        Some("fd")
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    // Not created by this process, so not removed by it.
    assert!(path.exists());
}

#[tokio::test]
async fn listen_fd_refuses_sockets_that_are_not_listening() {
    let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    let e = listen::open(&[ListenSpec::Fd(a.as_raw_fd())], &SocketOptions::default()).unwrap_err();
    assert!(matches!(e, ListenError::BadFd { .. }), "{e}");
    // The fd was left alone, not adopted and closed.
    use std::io::{Read, Write};
    (&a).write_all(b"x").unwrap();
    let mut buf = [0u8; 1];
    b.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"x");

    let file = tempfile::tempfile().unwrap();
    let e = listen::open(
        &[ListenSpec::Fd(file.as_raw_fd())],
        &SocketOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("not a socket"), "{e}");
}

#[tokio::test]
async fn listen_unix_removes_stale_socket_and_applies_mode() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.sock");
    // A socket file whose server has gone: bound, then dropped.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_socket());

    let opts = SocketOptions {
        mode: 0o600,
        ..SocketOptions::default()
    };
    let listeners = listen::open(&[ListenSpec::Unix(path.clone())], &opts).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let (stop, task) = serve_echo(listeners, Echo::default(), test_limits());
    let mut s = UnixStream::connect(&path).await.unwrap();
    assert_eq!(
        roundtrip(&mut s, 1, 0, "fresh")
            .await
            .header("X-Echo")
            .as_deref(),
        Some("fresh")
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert!(!path.exists(), "socket we created was not removed");
}

#[tokio::test]
async fn listen_unix_refuses_live_socket_and_non_socket_files() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live.sock");
    let other = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let e = listen::open(&[ListenSpec::Unix(live.clone())], &SocketOptions::default()).unwrap_err();
    assert!(matches!(e, ListenError::InUse(_)), "{e}");
    // The other server's socket is intact and still accepts.
    std::os::unix::net::UnixStream::connect(&live).unwrap();
    other.accept().unwrap();

    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, b"keep me").unwrap();
    let e = listen::open(&[ListenSpec::Unix(file.clone())], &SocketOptions::default()).unwrap_err();
    assert!(matches!(e, ListenError::NotASocket(_)), "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[tokio::test]
async fn listen_unix_with_unknown_owner_fails_without_leaving_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.sock");
    let opts = SocketOptions {
        owner: Some("no-such-user-xyzzy".into()),
        ..SocketOptions::default()
    };
    let e = listen::open(&[ListenSpec::Unix(path.clone())], &opts).unwrap_err();
    assert!(matches!(e, ListenError::UnknownUser(_)), "{e}");
    assert!(!path.exists());
}

#[tokio::test]
async fn no_spec_and_nothing_inherited_is_no_listener() {
    // LISTEN_PID is not ours (or unset) and the test's stdin is not a
    // listening socket.
    let e = listen::open(&[], &SocketOptions::default()).unwrap_err();
    assert!(matches!(e, ListenError::NoListener), "{e}");
}

#[tokio::test]
async fn logs_never_contain_param_values() {
    let srv = start(Limits {
        max_params_count: 3,
        ..test_limits()
    })
    .await;
    // A served request, a too-many-params one, and a malformed one, all
    // carrying the secret.
    let mut s = srv.connect().await;
    roundtrip(&mut s, 1, 0, "fine").await;
    let mut s = srv.connect().await;
    let many = pairs(&[(b"X", SECRET), (b"Y", SECRET)]);
    send(&mut s, &fcgi::request(1, 0, &many, b"")).await;
    fcgi::read_until_closed(&mut s, CLOSE_WAIT).await;
    let mut s = srv.connect().await;
    let mut broken = fcgi::encode_pairs(&pairs(&[]));
    broken.extend_from_slice(&[40, 40]);
    broken.extend_from_slice(SECRET);
    let mut wire = fcgi::begin(1, fcgi::RESPONDER, 0);
    wire.extend(fcgi::stream(fcgi::PARAMS, 1, &broken, 7));
    wire.extend(fcgi::record(fcgi::STDIN, 1, b""));
    send(&mut s, &wire).await;
    fcgi::read_until_closed(&mut s, CLOSE_WAIT).await;
    srv.stop().await.unwrap();

    let lines = LOG_LINES.lock().unwrap().clone();
    let secret = String::from_utf8_lossy(SECRET);
    assert!(
        lines.iter().any(|l| l.contains("more than 3 params")),
        "expected the limit to be logged: {lines:#?}"
    );
    assert!(lines.iter().any(|l| l.contains("malformed")), "{lines:#?}");
    for l in &lines {
        assert!(!l.contains(&*secret), "secret in log line: {l}");
    }
}
