//! The bounded verifier: where expensive password checks (crypt, bcrypt,
//! Argon2, PBKDF2) run, so that a flood of them cannot take memory, CPU or
//! threads from everything else.
//!
//! - At most [`VerifierPolicy::concurrency`] checks run at once, on tokio's
//!   blocking pool; the permit travels with the check, so a request that gives
//!   up (its decision timeout expired) does not free a slot its hash still uses.
//!   The blocking pool therefore never holds more verifications than that.
//! - Waiting checks form a FIFO queue bounded twice: by count
//!   ([`VerifierPolicy::queue`]) and by the wait it would mean
//!   ([`VerifierPolicy::max_wait`], estimated from the running average cost of
//!   a check). Past either bound a request is answered at once with
//!   [`VerifyError::Overloaded`], which the policy turns into a temporary
//!   failure: never OK, never dropped without an answer. The time bound keeps
//!   the queue short when hashes are slow (an Argon2 flood) and long when they
//!   are fast (every client reconnecting after a restart with SHA512-CRYPT).
//! - A request whose decision timeout expires while it waits leaves the queue
//!   without running its hash (its future is dropped before a permit is taken).
//!
//! Cheap checks ({PLAIN}, cache hits, unknown users) never come here, so they
//! never wait behind expensive ones.
//!
//! Checks for a user from a network the throttle knows for that user (a
//! login from there within its `known_days`) or trusts run in a second lane
//! of the same size and bounds ([`with_priority`]): a flood from unknown
//! addresses fills the first lane only, so the account's owner still gets
//! a slot. Worst-case hash memory is therefore two lanes' worth.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::metrics::METRICS;

tokio::task_local! {
    /// Set by the policy layer for a request from a known or trusted network.
    static PRIORITY: bool;
}

/// Runs `f` with its verifications in the priority lane when `priority`.
pub async fn with_priority<F: std::future::Future>(priority: bool, f: F) -> F::Output {
    PRIORITY.scope(priority, f).await
}

/// Limits of the verifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifierPolicy {
    /// Expensive checks running at once (`--verify-concurrency`, default:
    /// the number of CPUs).
    pub concurrency: usize,
    /// Checks waiting at most (`--verify-queue`).
    pub queue: usize,
    /// Longest expected wait admitted to the queue (`--verify-queue-ms`).
    pub max_wait: Duration,
}

/// Default queue length per unit of concurrency.
const QUEUE_PER_SLOT: usize = 64;
/// Default longest expected wait in the queue.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(1000);
/// How long shedding must stop before the next shed is logged again.
const BURST_QUIET: Duration = Duration::from_secs(10);

impl Default for VerifierPolicy {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        VerifierPolicy {
            concurrency: cpus,
            queue: QUEUE_PER_SLOT * cpus,
            max_wait: DEFAULT_MAX_WAIT,
        }
    }
}

/// Why a check did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The queue is full (or would wait too long): try again later.
    #[error("password verifier overloaded ({0})")]
    Overloaded(&'static str),
    /// The check itself panicked.
    #[error("password verifier task failed")]
    Crashed,
}

/// The verifier. Cheap to share: clones use the same slots.
#[derive(Debug, Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
    /// The lane of requests from known or trusted networks.
    priority: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    policy: VerifierPolicy,
    /// Running checks; a permit is held for the whole check.
    slots: Arc<Semaphore>,
    /// Checks waiting for a slot.
    waiting: AtomicUsize,
    /// Exponentially weighted average cost of one check, in µs (0: none yet).
    cost_us: AtomicU64,
    /// Sheds since the last log line, and when that line was written.
    shed: AtomicU64,
    last_report: Mutex<Option<Instant>>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier::new(VerifierPolicy::default())
    }
}

/// Leaves the waiting count when dropped (also when the request gives up).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Verifier {
    /// A verifier with these limits (a concurrency of 0 counts as 1).
    pub fn new(policy: VerifierPolicy) -> Self {
        let policy = VerifierPolicy {
            concurrency: policy.concurrency.max(1),
            ..policy
        };
        let lane = || {
            Arc::new(Inner {
                policy,
                slots: Arc::new(Semaphore::new(policy.concurrency)),
                waiting: AtomicUsize::new(0),
                cost_us: AtomicU64::new(0),
                shed: AtomicU64::new(0),
                last_report: Mutex::new(None),
            })
        };
        Verifier {
            inner: lane(),
            priority: lane(),
        }
    }

    /// The lane for this request (see [`with_priority`]).
    fn lane(&self) -> &Arc<Inner> {
        if PRIORITY.try_with(|p| *p).unwrap_or(false) {
            &self.priority
        } else {
            &self.inner
        }
    }

    /// The limits in force.
    pub fn policy(&self) -> &VerifierPolicy {
        &self.inner.policy
    }

    /// Checks running now in the first lane.
    pub fn running(&self) -> usize {
        self.inner.policy.concurrency - self.inner.slots.available_permits()
    }

    /// Checks waiting for a slot now in the first lane.
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Relaxed)
    }

    /// Runs `check` on the blocking pool once a slot is free, or refuses at
    /// once when the queue is full. Dropping the returned future while it
    /// waits removes it from the queue; once running, the check finishes
    /// (its result is then discarded) and only then frees its slot.
    pub async fn run<R, F>(&self, check: F) -> Result<R, VerifyError>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let inner = self.lane();
        let permit = match Arc::clone(&inner.slots).try_acquire_owned() {
            // A free slot and nobody ahead: no queueing.
            Ok(p) if inner.waiting.load(Relaxed) == 0 => p,
            other => {
                drop(other);
                Self::admit(inner)?;
                let _waiting = Waiting(&inner.waiting);
                Arc::clone(&inner.slots)
                    .acquire_owned()
                    .await
                    .expect("the verifier's semaphore is never closed")
            }
        };
        let this = Arc::clone(inner);
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let r = check();
            this.record_cost(started.elapsed());
            drop(permit);
            r
        })
        .await
        .map_err(|_| VerifyError::Crashed)
    }

    /// Takes a place in `inner`'s queue, or says why there is none.
    fn admit(inner: &Inner) -> Result<(), VerifyError> {
        let ahead = inner.waiting.fetch_add(1, Relaxed);
        let why = if ahead >= inner.policy.queue {
            Some("queue full")
        } else {
            // Expected wait: the checks ahead (and the running ones) spread
            // over the slots, at the average cost.
            let cost = inner.cost_us.load(Relaxed);
            let slots = inner.policy.concurrency as u64;
            let wait_us = (ahead as u64 + 1) * cost / slots;
            (wait_us > inner.policy.max_wait.as_micros() as u64).then_some("expected wait too long")
        };
        match why {
            None => {
                // The caller's `Waiting` guard undoes the increment.
                Ok(())
            }
            Some(why) => {
                inner.waiting.fetch_sub(1, Relaxed);
                inner.shed(why);
                Err(VerifyError::Overloaded(why))
            }
        }
    }
}

impl Inner {
    fn shed(&self, why: &'static str) {
        let inner = self;
        METRICS.verify_shed();
        let n = inner.shed.fetch_add(1, Relaxed) + 1;
        let mut last = crate::sync::lock(&inner.last_report);
        let now = Instant::now();
        let report = match *last {
            None => true,
            Some(t) => now.duration_since(t) >= BURST_QUIET,
        };
        // While a burst goes on, keep the timestamp moving so it stays one burst.
        *last = Some(now);
        if report {
            inner.shed.store(0, Relaxed);
            log::warn!(
                "verifier: {why} ({} running at most, {} waiting at most, {} ms expected wait at \
                 most); answering temporary failures ({n} shed since the last report)",
                inner.policy.concurrency,
                inner.policy.queue,
                inner.policy.max_wait.as_millis()
            );
        }
    }
}

impl Inner {
    fn record_cost(&self, took: Duration) {
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        // Average over about the last 8 checks; the first sets it.
        let _ = self.cost_us.fetch_update(Relaxed, Relaxed, |old| {
            Some(if old == 0 {
                us.max(1)
            } else {
                (old * 7 + us) / 8
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc;

    type Gate = Arc<Mutex<mpsc::Receiver<()>>>;

    /// Spawns, on `v`, a check that blocks until the gate opens and then
    /// counts itself in `ran`; it answers how many had run by then.
    fn spawn_gated(
        v: &Verifier,
        gate: &Gate,
        ran: &Arc<AtomicUsize>,
    ) -> tokio::task::JoinHandle<Result<usize, VerifyError>> {
        let (v, gate, ran) = (v.clone(), Arc::clone(gate), Arc::clone(ran));
        let check = move || {
            crate::sync::lock(&gate).recv().unwrap();
            ran.fetch_add(1, Relaxed) + 1
        };
        tokio::spawn(async move { v.run(check).await })
    }

    /// A verifier with these limits, a closed gate (send to open it once per
    /// check) and a counter of checks that ran.
    fn setup(
        concurrency: usize,
        queue: usize,
        max_wait: Duration,
    ) -> (Verifier, mpsc::Sender<()>, Gate, Arc<AtomicUsize>) {
        let v = Verifier::new(VerifierPolicy {
            concurrency,
            queue,
            max_wait,
        });
        let (open, gate) = mpsc::channel::<()>();
        (
            v,
            open,
            Arc::new(Mutex::new(gate)),
            Arc::new(AtomicUsize::new(0)),
        )
    }

    const LONG: Duration = Duration::from_secs(3600);

    async fn until(mut cond: impl FnMut() -> bool) {
        while !cond() {
            tokio::task::yield_now().await;
            std::thread::yield_now();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bounded_queue_sheds_at_once_and_drains() {
        let (v, open, gate, ran) = setup(2, 3, LONG);
        let mut jobs = Vec::new();
        for _ in 0..5 {
            jobs.push(spawn_gated(&v, &gate, &ran));
        }
        // 2 running (blocked on the gate), 3 waiting.
        until(|| v.waiting() == 3).await;
        // The 6th is refused at once, without waiting for the gate.
        let shed = v.run(|| 0usize).await;
        assert_eq!(shed, Err(VerifyError::Overloaded("queue full")));
        assert_eq!(ran.load(Relaxed), 0);
        for _ in 0..5 {
            open.send(()).unwrap();
        }
        let mut results = Vec::new();
        for j in jobs {
            results.push(j.await.unwrap().unwrap());
        }
        results.sort_unstable();
        assert_eq!(results, vec![1, 2, 3, 4, 5]);
        assert_eq!(v.waiting(), 0);
        // Drained: a new check runs.
        assert_eq!(v.run(|| 7usize).await, Ok(7));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_that_gives_up_leaves_the_queue_without_hashing() {
        let (v, open, gate, ran) = setup(1, 10, LONG);
        let running = spawn_gated(&v, &gate, &ran);
        until(|| v.inner.slots.available_permits() == 0).await;
        let queued_ran = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&queued_ran);
        let queued = {
            let v = v.clone();
            tokio::spawn(async move { v.run(move || flag.store(true, Relaxed)).await })
        };
        until(|| v.waiting() == 1).await;
        // The decision timeout drops the request's future.
        queued.abort();
        assert!(queued.await.unwrap_err().is_cancelled());
        assert_eq!(v.waiting(), 0);
        open.send(()).unwrap();
        assert_eq!(running.await.unwrap(), Ok(1));
        // The slot is free again and the abandoned check never ran.
        assert_eq!(v.run(|| 5).await, Ok(5));
        assert!(!queued_ran.load(Relaxed));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_slot_stays_taken_until_an_abandoned_check_finishes() {
        let (v, open, gate, ran) = setup(1, 10, LONG);
        let running = spawn_gated(&v, &gate, &ran);
        until(|| v.inner.slots.available_permits() == 0).await;
        // The request gives up while its hash runs: the hash keeps its slot.
        running.abort();
        let _ = running.await;
        assert_eq!(v.inner.slots.available_permits(), 0);
        open.send(()).unwrap();
        until(|| v.inner.slots.available_permits() == 1).await;
        assert_eq!(ran.load(Relaxed), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_checks_shorten_the_queue() {
        let (v, open, gate, ran) = setup(1, 100, Duration::from_millis(1000));
        // As if every check so far took 400 ms.
        v.inner.cost_us.store(400_000, Relaxed);
        let mut jobs = Vec::new();
        // One runs; two wait (expected waits 400 and 800 ms); the next
        // would wait 1200 ms and is refused.
        for _ in 0..3 {
            jobs.push(spawn_gated(&v, &gate, &ran));
            until(|| v.inner.slots.available_permits() == 0).await;
        }
        until(|| v.waiting() == 2).await;
        assert_eq!(
            v.run(|| 0).await,
            Err(VerifyError::Overloaded("expected wait too long"))
        );
        for _ in 0..3 {
            open.send(()).unwrap();
        }
        for j in jobs {
            assert!(j.await.unwrap().is_ok());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn known_networks_have_a_lane_a_flood_cannot_fill() {
        let (v, open, gate, ran) = setup(1, 0, LONG);
        let flood = spawn_gated(&v, &gate, &ran);
        until(|| v.running() == 1).await;
        // The first lane is full and has no queue: refused.
        assert_eq!(
            with_priority(false, v.run(|| 1)).await,
            Err(VerifyError::Overloaded("queue full"))
        );
        assert_eq!(
            v.run(|| 1).await,
            Err(VerifyError::Overloaded("queue full"))
        );
        // The owner's check runs in the other lane at once.
        assert_eq!(with_priority(true, v.run(|| 2)).await, Ok(2));
        open.send(()).unwrap();
        assert_eq!(flood.await.unwrap(), Ok(1));
    }
}
