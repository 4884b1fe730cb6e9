//! Connections that own a background driver future: the connection counts as closed when
//! its driver ends.

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::conn::closable::{Closable, CloseSignal};
use crate::guard::Guarded;

/// Marks the connection closed when the driver's task ends, however it ends.
struct MarkClosedOnDrop(CloseSignal);

impl Drop for MarkClosedOnDrop {
    fn drop(&mut self) {
        self.0.mark_closed();
    }
}

/// Stops the driver when the last handle goes.
#[derive(Debug)]
struct StopOnDrop {
    _stop: oneshot::Sender<()>,
}

/// A client handle `C` whose connection is run by a background *driver* future, made
/// [`Closable`]: the driver runs in a task of its own, and when it ends, by itself or by a
/// panic, the connection counts as closed (`close_finished()` resolves), so the persistent
/// connection notices a dead connection without any user code in the request path (R6).
///
/// Many async clients are built this way: `redis`' `MultiplexedConnection::new` returns a
/// handle and the future that reads and writes the socket, which ends when the socket
/// does; so do `hyper`'s client connections and `tokio-postgres`. Hand both halves to
/// [`Driven::spawn`] in `connect`; [`close`](Closable::close) stops the driver (dropping it,
/// which releases its socket) and resolves once it is gone. Dropping every clone of the
/// wrapper stops the driver too, so no task outlives it.
///
/// A driver only ends when its socket does, which a hung server never makes happen: add a
/// [health check](crate::conn::HealthChecked) around it (`HealthChecked<Driven<C>>`).
///
/// Cheap to clone when `C` is; dereferences to `C`. Must be created within a Tokio runtime.
///
/// ```
/// use persistent_connection::conn::Driven;
/// use persistent_connection::Closable;
/// use tokio::sync::mpsc;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // A client handle that queues requests, and the driver that serves them until the
/// // "socket" (here a channel) closes.
/// let (requests, mut rx) = mpsc::unbounded_channel::<String>();
/// let (socket_dies, died) = tokio::sync::oneshot::channel::<()>();
/// let driver = async move {
///     tokio::select! {
///         _ = async { while let Some(_req) = rx.recv().await {} } => {}
///         _ = died => {} // the peer went away
///     }
/// };
/// let conn = Driven::spawn(requests, driver);
/// conn.send("GET".to_owned()).unwrap(); // Deref to the handle
/// assert!(!conn.is_closed());
/// drop(socket_dies);
/// conn.close_finished().await; // noticed because the driver ended
/// assert!(conn.is_closed() && conn.driver_ended());
/// # }
/// ```
pub struct Driven<C> {
    conn: C,
    signal: CloseSignal,
    ended: Arc<std::sync::atomic::AtomicBool>,
    _stop: Arc<StopOnDrop>,
}

impl<C: Clone> Clone for Driven<C> {
    fn clone(&self) -> Self {
        Driven {
            conn: self.conn.clone(),
            signal: self.signal.clone(),
            ended: self.ended.clone(),
            _stop: self._stop.clone(),
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for Driven<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driven")
            .field("conn", &self.conn)
            .field("closed", &self.signal.is_closed())
            .field("driver_ended", &self.driver_ended())
            .finish()
    }
}

impl<C> Driven<C> {
    /// Runs `driver` in a task of its own on the current Tokio runtime; `conn` counts as
    /// closed once it ends. Its output is dropped (log it inside the driver if it matters);
    /// a panic is caught and logged at warn.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, as `tokio::spawn` does.
    pub fn spawn<F>(conn: C, driver: F) -> Driven<C>
    where
        F: Future + Send + 'static,
    {
        let signal = CloseSignal::owned();
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let owner = signal.clone();
        let ended_flag = ended.clone();
        tokio::spawn(async move {
            // Marks the connection closed however this task ends, even by a panic that
            // the guard did not see (R13: `close()` never hangs on a dead driver).
            let _mark = MarkClosedOnDrop(owner.clone());
            // The driver's polls and its drop (when it ends, or when `close()` or the last
            // handle stops it) run under the crate's guard.
            let driver = Guarded::boxed("connection driver", driver);
            tokio::select! {
                r = driver => {
                    ended_flag.store(true, std::sync::atomic::Ordering::Release);
                    match r {
                        Ok(_) => tracing::debug!("connection driver ended"),
                        Err(panic) => tracing::warn!(%panic, "connection driver panicked"),
                    }
                }
                _ = owner.closing() => {}
                _ = &mut stop_rx => {}
            }
            // The driver (and the socket it owns) is dropped by now.
        });
        Driven {
            conn,
            signal,
            ended,
            _stop: Arc::new(StopOnDrop { _stop: stop_tx }),
        }
    }

    /// The client handle.
    pub fn get(&self) -> &C {
        &self.conn
    }

    /// True once the driver ended by itself (or panicked), rather than being stopped by
    /// `close()`.
    pub fn driver_ended(&self) -> bool {
        self.ended.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl<C> Deref for Driven<C> {
    type Target = C;
    fn deref(&self) -> &C {
        &self.conn
    }
}

impl<C: Sync> Closable for Driven<C> {
    /// Stops the driver and resolves once it has been dropped.
    fn close(&self) -> impl Future<Output = ()> + Send {
        self.signal.close()
    }

    fn is_closed(&self) -> bool {
        self.signal.is_closed()
    }

    fn close_finished(&self) -> impl Future<Output = ()> + Send {
        self.signal.close_finished()
    }
}
