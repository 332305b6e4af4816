//! Accept loop: takes connections from every [`Listener`], serves each with
//! [`fastcgi::conn::serve`] in its own task, caps how many run at once, and shuts
//! down gracefully.
//!
//! Shape follows mini-redis `server.rs` (a semaphore for the connection cap,
//! a broadcast for shutdown, waiting for connection tasks before returning).
//! Differences: a connection over the cap is accepted and closed at once
//! rather than left in the kernel backlog, so nginx fails fast ("connection
//! reset") instead of waiting for `fastcgi_connect_timeout`; and shutdown waits
//! on the semaphore itself: when every permit is back, every connection is done.

use std::future::{poll_fn, Future};
use std::io;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

use crate::fastcgi::{self, Handler, Limits};
use crate::listen::{self, Listener};

/// Pause after an accept error such as EMFILE: retrying at once would spin,
/// and the condition clears as connections end.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// A freshly accepted connection of either kind.
enum Stream {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

/// Accept on every listener, serve each connection with
/// [`fastcgi::conn::serve`], at most `limits.max_connections` at once (a
/// connection over the limit is accepted and closed immediately, logged once
/// per burst, not per connection).
///
/// Resolves when `shutdown` fires: stop accepting, let in-flight requests
/// finish (connections idle between requests close at once), then return.
/// Unix socket files this process created are removed when accepting stops.
/// Connection errors are logged here, once per connection, without param
/// values.
///
/// Errors only if `listeners` is empty; failures of single connections or
/// accepts are logged and survived.
pub async fn run<H: Handler>(
    listeners: Vec<Listener>,
    handler: Arc<H>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    if listeners.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "server::run called without listeners",
        ));
    }
    // Semaphore permits are bounded; a cap that large means "no cap" anyway.
    let max = limits
        .max_connections
        .min(Semaphore::MAX_PERMITS)
        .min(u32::MAX as usize);
    let permits = Arc::new(Semaphore::new(max));
    let limits = Arc::new(limits);
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut refused: u64 = 0;
    let mut accept_failing = false;
    let mut next = 0usize;
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            r = accept_any(&listeners, &mut next) => r,
        };
        let stream = match accepted {
            Ok(s) => {
                if accept_failing {
                    log::info!("accepting connections again");
                    accept_failing = false;
                }
                s
            }
            Err(e) => {
                if !accept_failing {
                    log::warn!("accept failed: {e}; retrying");
                    accept_failing = true;
                }
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if refused == 0 {
                log::warn!(
                    "connection limit of {} reached; closing new connections until one ends",
                    limits.max_connections
                );
            }
            refused += 1;
            drop(stream);
            continue;
        };
        if refused > 0 {
            log::info!("connection limit: closed {refused} connection(s) while at the limit");
            refused = 0;
        }

        let handler = Arc::clone(&handler);
        let limits = Arc::clone(&limits);
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            let result = match stream {
                Stream::Unix(s) => fastcgi::conn::serve(s, &*handler, &limits, stop).await,
                Stream::Tcp(s) => {
                    // One write per response already; do not let Nagle delay it.
                    let _ = s.set_nodelay(true);
                    fastcgi::conn::serve(s, &*handler, &limits, stop).await
                }
            };
            if let Err(e) = result {
                log::warn!("fastcgi connection closed: {e}");
            }
            drop(permit);
        });
    }

    // Stop accepting: closing the listeners makes new connects fail at once,
    // and the socket files go with them so a new instance can bind.
    for l in &listeners {
        if let Listener::Unix(u) = l {
            listen::remove_created_socket(u);
        }
    }
    drop(listeners);
    if refused > 0 {
        log::info!("connection limit: closed {refused} connection(s) while at the limit");
    }

    let _ = stop_tx.send(true);
    // Every running connection holds a permit; getting them all back means
    // every in-flight request has been answered. acquire_many fails only if
    // the semaphore is closed, which nothing does.
    let _ = permits.acquire_many(max as u32).await;
    Ok(())
}

/// Accepts from whichever listener is ready first. The starting listener
/// rotates so a busy one cannot starve the others.
async fn accept_any(listeners: &[Listener], next: &mut usize) -> io::Result<Stream> {
    poll_fn(|cx| {
        let n = listeners.len();
        for i in 0..n {
            let idx = (*next + i) % n;
            let polled = match &listeners[idx] {
                Listener::Unix(l) => l.poll_accept(cx).map_ok(|(s, _)| Stream::Unix(s)),
                Listener::Tcp(l) => l.poll_accept(cx).map_ok(|(s, _)| Stream::Tcp(s)),
            };
            if let Poll::Ready(r) = polled {
                *next = (idx + 1) % n;
                return Poll::Ready(r);
            }
        }
        Poll::Pending
    })
    .await
}
