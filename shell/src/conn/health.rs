//! Health checks: a wrapper that gives any connection a periodic check and closes it when
//! the checks keep failing (S7).

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::conn::closable::Closable;
use crate::guard::{self, Guarded};

/// When and how often a [`HealthChecked`] connection is checked.
///
/// Every `interval` (counted from the end of the previous check) the check runs, with
/// `timeout`; after `failures` consecutive failed or timed-out checks the connection is
/// closed. A check that succeeds resets the count. So a connection that stops answering is
/// closed at most `failures × (interval + timeout)` after its last good check, and a
/// connection whose checks fail at once after `failures × interval`.
///
/// ```
/// use std::time::Duration;
/// use persistent_connection::conn::HealthCheck;
///
/// let h = HealthCheck::new(Duration::from_millis(100), Duration::from_millis(200), 2);
/// assert_eq!(h.worst_case_detection(), Duration::from_millis(600));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// Time between the end of one check and the start of the next (and before the first).
    pub interval: Duration,
    /// How long a check may take before it counts as failed.
    pub timeout: Duration,
    /// Consecutive failed checks that close the connection; 0 counts as 1.
    pub failures: u32,
}

impl HealthCheck {
    /// Check every `interval` with `timeout`; close after `failures` consecutive failures
    /// (0 counts as 1).
    pub fn new(interval: Duration, timeout: Duration, failures: u32) -> HealthCheck {
        HealthCheck {
            interval,
            timeout,
            failures: failures.max(1),
        }
    }

    /// The longest a connection that stopped answering right after a good check stays
    /// open: `failures × (interval + timeout)` (saturating).
    pub fn worst_case_detection(&self) -> Duration {
        self.interval
            .saturating_add(self.timeout)
            .saturating_mul(self.failures.max(1))
    }
}

/// Stops the check task when the last handle goes.
#[derive(Debug)]
struct StopOnDrop {
    _stop: oneshot::Sender<()>,
}

/// A connection `C` with a health check: a task runs `check` on it every
/// [`interval`](HealthCheck::interval) and closes it after
/// [`failures`](HealthCheck::failures) consecutive checks that failed or took longer than
/// [`timeout`](HealthCheck::timeout).
///
/// A hung server (a stopped process, a network black hole) never closes its socket, so
/// without a check the connection stays "connected" forever. With one, the connection
/// closes itself and the persistent connection sees an ordinary close: `Disconnected`,
/// then a new round (R6). This is the original's design: the RPC connection's heartbeat
/// closes it, and `Persistent_connection_kernel` only sees it close. The machine is not
/// involved (S7).
///
/// **Interaction with R6.** After `Disconnected`, the next round waits for the retry timer
/// of the attempt that made this connection. A connection closed by its health check soon
/// after it was made (say the server hung at once) therefore waits for the rest of that
/// retry delay, exactly like a connection that the peer closed young; one that lived longer
/// than the retry delay is replaced at once. Choose the retry policy with that in mind: with
/// the default 10 s and a check that detects within 1 s, a server that hangs right after
/// accepting costs about 10 s, not 1 s.
///
/// The check runs beside the user's own traffic on the same connection. With a client
/// that multiplexes requests (Redis, an RPC client) that is what a heartbeat is; on a raw
/// byte stream, make sure a check's answer cannot be taken for the user's data (or the
/// reverse).
///
/// The task ends when the connection closes (either side, or by the check), or when every
/// handle of the wrapper is dropped; it holds a clone of `C` meanwhile. The check gets a
/// clone of the connection; it must not close it (returning an error is how it says the
/// connection is bad). A check that panics, when called, while it runs or when it is dropped, is a
/// failed check (R13): the checking goes on. A check that fails while the connection's
/// owner is already closing it neither closes it again nor claims that close
/// ([`closed_by_health_check`](HealthChecked::closed_by_health_check) stays false). Cheap to clone when `C` is; dereferences to `C`. Must be created
/// within a Tokio runtime.
///
/// ```
/// use std::time::Duration;
/// use persistent_connection::conn::{CloseSignal, HealthCheck, HealthChecked};
/// use persistent_connection::Closable;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// // A connection whose peer stopped answering: every check hangs.
/// let conn = HealthChecked::new(
///     CloseSignal::new(),
///     HealthCheck::new(Duration::from_secs(1), Duration::from_secs(2), 3),
///     |_conn: CloseSignal| async { std::future::pending::<Result<(), String>>().await },
/// );
/// let start = tokio::time::Instant::now();
/// conn.close_finished().await;
/// assert_eq!(start.elapsed(), Duration::from_secs(9)); // 3 × (1 s + 2 s)
/// assert!(conn.closed_by_health_check());
/// # }
/// ```
pub struct HealthChecked<C> {
    conn: C,
    closed_by_check: Arc<AtomicBool>,
    _stop: Arc<StopOnDrop>,
}

impl<C: Clone> Clone for HealthChecked<C> {
    fn clone(&self) -> Self {
        HealthChecked {
            conn: self.conn.clone(),
            closed_by_check: self.closed_by_check.clone(),
            _stop: self._stop.clone(),
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for HealthChecked<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthChecked")
            .field("conn", &self.conn)
            .field("closed_by_check", &self.closed_by_health_check())
            .finish()
    }
}

impl<C> HealthChecked<C>
where
    C: Closable + Clone + Send + Sync + 'static,
{
    /// Wraps `conn` and starts checking it with `check` (on the current Tokio runtime).
    /// A check's `Err` is logged at warn with its text, as is a timeout.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, as `tokio::spawn` does.
    pub fn new<F, Fut, E>(conn: C, settings: HealthCheck, check: F) -> HealthChecked<C>
    where
        F: Fn(C) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        let (stop_tx, stop_rx) = oneshot::channel();
        let closed_by_check = Arc::new(AtomicBool::new(false));
        // The check itself is guarded inside (a panic is a failed check); this guard
        // catches the rest (the connection's own `Closable` impl) and says so.
        let task = Guarded::boxed(
            "health check task",
            run_checks(
                conn.clone(),
                settings,
                check,
                stop_rx,
                closed_by_check.clone(),
            ),
        );
        tokio::spawn(async move {
            if let Err(panic) = task.await {
                tracing::warn!(%panic, "the health check task ended: the connection is no longer checked");
            }
        });
        HealthChecked {
            conn,
            closed_by_check,
            _stop: Arc::new(StopOnDrop { _stop: stop_tx }),
        }
    }
}

impl<C> HealthChecked<C> {
    /// The connection.
    pub fn get(&self) -> &C {
        &self.conn
    }

    /// True once the health check has closed the connection (its checks kept failing).
    pub fn closed_by_health_check(&self) -> bool {
        self.closed_by_check.load(Ordering::Acquire)
    }
}

impl<C> Deref for HealthChecked<C> {
    type Target = C;
    fn deref(&self) -> &C {
        &self.conn
    }
}

impl<C: Closable + Sync> Closable for HealthChecked<C> {
    fn close(&self) -> impl Future<Output = ()> + Send {
        self.conn.close()
    }

    fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    fn close_finished(&self) -> impl Future<Output = ()> + Send {
        self.conn.close_finished()
    }
}

/// The check task: sleeps, checks, counts failures, closes; ends when the connection
/// closes or every handle is gone. The user's check runs under the crate's guard: a panic
/// in the call, in the future or in its drop is a failed check (R13), never the end of the
/// task.
async fn run_checks<C, F, Fut, E>(
    conn: C,
    settings: HealthCheck,
    check: F,
    mut stop: oneshot::Receiver<()>,
    closed_by_check: Arc<AtomicBool>,
) where
    C: Closable + Clone + Send + Sync + 'static,
    F: Fn(C) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    // Public fields: `failures: 0` may bypass `new`; it counts as 1, as documented.
    let failures = settings.failures.max(1);
    let finished = conn.close_finished();
    tokio::pin!(finished);
    let mut failed = 0u32;
    loop {
        tokio::select! {
            _ = &mut finished => return,
            _ = &mut stop => return,
            _ = tokio::time::sleep(settings.interval) => {}
        }
        if conn.is_closed() {
            return;
        }
        let one_check = guard::call("health check", || check(conn.clone()))
            .map(|fut| tokio::time::timeout(settings.timeout, Guarded::boxed("health check", fut)));
        let one_check = async move {
            match one_check {
                Ok(timed) => Ok(timed.await),
                Err(panic) => Err(panic),
            }
        };
        let outcome = tokio::select! {
            _ = &mut finished => return,
            _ = &mut stop => return,
            r = one_check => r,
        };
        // The connection began closing while the check ran (its owner closed it): the
        // check's verdict no longer matters, and the close is not the check's.
        if conn.is_closed() {
            return;
        }
        match outcome {
            Ok(Ok(Ok(Ok(())))) => failed = 0,
            Ok(Ok(Ok(Err(e)))) => {
                failed += 1;
                tracing::warn!(failed, of = failures, error = %e, "health check failed");
            }
            Ok(Err(_)) => {
                failed += 1;
                tracing::warn!(failed, of = failures, timeout = ?settings.timeout, "health check timed out");
            }
            Ok(Ok(Err(panic))) | Err(panic) => {
                failed += 1;
                tracing::warn!(failed, of = failures, %panic, "health check panicked; a failed check");
            }
        }
        if failed >= failures {
            tracing::warn!(
                failed,
                "health check: closing the connection after {failed} failed checks"
            );
            closed_by_check.store(true, Ordering::Release);
            tokio::select! {
                _ = conn.close() => {}
                _ = &mut stop => {}
            }
            return;
        }
    }
}
