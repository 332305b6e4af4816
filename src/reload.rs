//! A [`Handler`] whose [`Service`] can be replaced while requests are served
//! (SIGHUP / `systemctl reload`).
//!
//! Each request clones the current `Arc<Service>` out of a `RwLock` (held for
//! the clone only) and runs to its end on that service, so a swap never
//! touches a request in flight: old requests finish on the old service, new
//! ones start on the new one, and the old service is dropped with its last
//! request.

use std::sync::{Arc, RwLock};

use crate::fastcgi::{Handler, Request, Response};
use crate::service::Service;

/// The handler the server runs: delegates to the current [`Service`].
#[derive(Debug)]
pub struct Reloadable {
    current: RwLock<Arc<Service>>,
}

impl Reloadable {
    /// Starts with `service`.
    pub fn new(service: Service) -> Self {
        Reloadable {
            current: RwLock::new(Arc::new(service)),
        }
    }

    /// The service new requests go to.
    pub fn current(&self) -> Arc<Service> {
        // A panic while holding the lock can only happen inside Arc::clone or
        // the assignment in `replace`; the value is still a valid Arc.
        Arc::clone(&crate::sync::read(&self.current))
    }

    /// Sends new requests to `service` (after it inherits the old one's
    /// per-process HTTP auth state); requests in flight finish on the old one.
    pub fn replace(&self, mut service: Service) {
        service.inherit_state(&self.current());
        let new = Arc::new(service);
        let old = std::mem::replace(&mut *crate::sync::write(&self.current), new);
        // Dropped outside the lock (it may close passdb pools).
        drop(old);
    }
}

impl Handler for Reloadable {
    async fn handle(&self, req: Request) -> Response {
        let service = self.current();
        service.handle(req).await
    }
}
