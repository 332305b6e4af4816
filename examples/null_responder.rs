//! The FastCGI hop with no work behind it: our own transport
//! (`fastcgi::conn` + `server::run`) answering every request with the fixed
//! headers of a successful IMAP login. `tests/bench/responder` measures it
//! beside the static ceiling and the real responder, which splits the gap to
//! the ceiling into what nginx's FastCGI proxying costs (ceiling → null) and
//! what authenticating costs (null → ours).
//!
//!   cargo run --release --example null_responder -- /path/to/socket

use std::sync::Arc;

use nginx_auth_fcgi::fastcgi::{Handler, Limits, Request, Response};
use nginx_auth_fcgi::listen::{self, ListenSpec, SocketOptions};
use nginx_auth_fcgi::server;

struct Fixed;

impl Handler for Fixed {
    async fn handle(&self, _req: Request) -> Response {
        Response {
            stdout: b"Auth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 143\r\n\r\n".to_vec(),
            app_status: 0,
        }
    }
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: null_responder SOCKET_PATH");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let spec: ListenSpec = format!("unix:{path}").parse().expect("socket path");
        let options = SocketOptions {
            mode: 0o666,
            ..SocketOptions::default()
        };
        let listeners = listen::open(&[spec], &options).expect("listen");
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        let term = async {
            let mut s = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler");
            s.recv().await;
        };
        let shutdown = async {
            tokio::select! { _ = stop => {}, _ = term => {} }
        };
        server::run(listeners, Arc::new(Fixed), Limits::default(), shutdown)
            .await
            .expect("serve");
    });
}
