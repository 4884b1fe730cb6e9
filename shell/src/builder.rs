//! Creating a persistent connection.

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use persistent_connection_core::{Config, Jitter, Machine, RetryDelay, RetryPolicy};
use tokio::sync::{broadcast, mpsc, watch};

use crate::Event;
use crate::closable::Closable;
use crate::driver::Driver;
use crate::handle::{ConnectContext, PersistentConnection, Shared};

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
pub(crate) type GetAddressFn<A, E> = Arc<dyn Fn() -> BoxFuture<Result<A, E>> + Send + Sync>;
pub(crate) type ConnectFn<A, C, E> =
    Arc<dyn Fn(A, ConnectContext<E>) -> BoxFuture<Result<C, E>> + Send + Sync>;
pub(crate) type OnEventFn<A, C, E> = Arc<dyn Fn(Event<A, C, E>) -> BoxFuture<()> + Send + Sync>;

/// The user's callbacks and the settings the driver needs.
pub(crate) struct Callbacks<A, C, E> {
    pub(crate) get_address: GetAddressFn<A, E>,
    pub(crate) connect: ConnectFn<A, C, E>,
    pub(crate) on_event: OnEventFn<A, C, E>,
    pub(crate) connect_timeout: Option<Duration>,
}

/// The default number of events an [`events`](PersistentConnection::events) receiver may
/// fall behind before it lags.
pub const DEFAULT_EVENT_CAPACITY: usize = 64;

/// The largest [`Builder::event_capacity`].
pub const MAX_EVENT_CAPACITY: usize = 1 << 16;

/// Sets up a [`PersistentConnection`]; made by [`PersistentConnection::builder`].
///
/// ```
/// use std::time::Duration;
/// use persistent_connection::{CloseSignal, Jitter, PersistentConnection, RetryPolicy};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let pc = PersistentConnection::builder(
///     "service",
///     || async { Ok::<_, String>(1u16) },
///     |_port, _cx| async { Ok(CloseSignal::new()) },
/// )
/// .retry_delay(Duration::from_millis(500)) // the seed's `retry_delay`, constant
/// .jitter(Jitter::NonRandom)               // or keep the default ±30%
/// .seed(42)                                // reproducible jitter
/// .connect_timeout(Duration::from_secs(5)) // a hung connect is a failed attempt
/// .build();
/// pc.connected().await;
/// pc.close().await;
///
/// // gRPC-style exponential backoff instead:
/// let pc2 = PersistentConnection::builder(
///     "other",
///     || async { Ok::<_, String>(2u16) },
///     |_port, _cx| async { Ok(CloseSignal::new()) },
/// )
/// .retry_policy(RetryPolicy::grpc())
/// .build();
/// pc2.close().await;
/// # }
/// ```
pub struct Builder<A, C, E> {
    server_name: Arc<str>,
    callbacks: Callbacks<A, C, E>,
    retry: RetryPolicy,
    seed: Option<u64>,
    event_capacity: usize,
}

impl<A, C, E> fmt::Debug for Builder<A, C, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("server_name", &self.server_name)
            .field("retry", &self.retry)
            .field("seed", &self.seed)
            .field("connect_timeout", &self.callbacks.connect_timeout)
            .field("event_capacity", &self.event_capacity)
            .finish_non_exhaustive()
    }
}

impl<A, C, E> Builder<A, C, E>
where
    A: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
    C: Closable + Clone + fmt::Debug + Send + Sync + 'static,
    E: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
{
    pub(crate) fn new<G, GF, K, KF>(server_name: Arc<str>, get_address: G, connect: K) -> Self
    where
        G: Fn() -> GF + Send + Sync + 'static,
        GF: Future<Output = Result<A, E>> + Send + 'static,
        K: Fn(A, ConnectContext<E>) -> KF + Send + Sync + 'static,
        KF: Future<Output = Result<C, E>> + Send + 'static,
    {
        Builder {
            server_name,
            callbacks: Callbacks {
                get_address: Arc::new(move || Box::pin(get_address())),
                connect: Arc::new(move |a, cx| Box::pin(connect(a, cx))),
                on_event: Arc::new(|_| Box::pin(async {})),
                connect_timeout: None,
            },
            retry: RetryPolicy::default(),
            seed: None,
            event_capacity: DEFAULT_EVENT_CAPACITY,
        }
    }

    /// The seed's `on_event`: called with every event and awaited before the next step.
    /// A panic in it counts as handled and is logged (R13).
    pub fn on_event<F, Fut>(mut self, on_event: F) -> Self
    where
        F: Fn(Event<A, C, E>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.callbacks.on_event = Arc::new(move |e| Box::pin(on_event(e)));
        self
    }

    /// A constant base retry delay (the default is 10 s), keeping the jitter setting.
    ///
    /// The delay separates the *starts* of attempts: a connection that dies younger than
    /// the delay waits for the rest of it before the next attempt (R6). See the crate
    /// docs' "Defaults and what they mean" and the presets of [`RetryPolicy`].
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry.delay = RetryDelay::Constant(delay);
        self
    }

    /// The seed's `retry_delay: unit -> span`: called once per attempt (R2). A panic in it
    /// is caught and logged, and the default 10 s is used for that attempt.
    pub fn retry_delay_fn(mut self, f: impl FnMut() -> Duration + Send + 'static) -> Self {
        let mut f = f;
        self.retry.delay = RetryDelay::from_fn(move |_| f());
        self
    }

    /// Any base delay policy of the core: constant, exponential or a function of the
    /// number of consecutive unsuccessful attempts.
    pub fn retry_delay_policy(mut self, delay: RetryDelay) -> Self {
        self.retry.delay = delay;
        self
    }

    /// How the base delay is jittered (default ±30%, R7); [`Jitter::NonRandom`] uses it
    /// unchanged.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.retry.jitter = jitter;
        self
    }

    /// Base delay and jitter at once, e.g. [`RetryPolicy::grpc`].
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The seed of the jitter's generator; the default is drawn from OS randomness. The
    /// same seed gives the same delays (R7).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Fail an attempt whose `connect` has not finished within `timeout`
    /// ([`Error::TimedOut`](crate::Error::TimedOut)); its future is dropped. Default: none.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.callbacks.connect_timeout = Some(timeout);
        self
    }

    /// How far an [`events`](PersistentConnection::events) receiver may fall behind before
    /// it lags: default [`DEFAULT_EVENT_CAPACITY`], clamped to `1..=`[`MAX_EVENT_CAPACITY`]
    /// (the buffer is allocated up front).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.clamp(1, MAX_EVENT_CAPACITY);
        self
    }

    /// Starts the persistent connection on the current Tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, as `tokio::spawn` does; use
    /// [`build_on`](Builder::build_on) to name one.
    pub fn build(self) -> PersistentConnection<A, C, E> {
        self.build_on(&tokio::runtime::Handle::current())
    }

    /// Starts the persistent connection on the runtime `runtime`.
    pub fn build_on(self, runtime: &tokio::runtime::Handle) -> PersistentConnection<A, C, E> {
        let Builder {
            server_name,
            callbacks,
            retry,
            seed,
            event_capacity,
        } = self;
        let seed = seed.unwrap_or_else(os_seed);
        let retry = RetryPolicy {
            delay: guard_retry_delay(retry.delay, server_name.clone()),
            jitter: retry.jitter,
        };
        let machine = Machine::new(Config { seed, retry });
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            server_name,
            current: ArcSwapOption::empty(),
            closed: AtomicBool::new(false),
            close_finished: watch::Sender::new(false),
            became_current: broadcast::Sender::new(16),
            outcomes: broadcast::Sender::new(16),
            events: std::sync::OnceLock::new(),
            event_capacity,
        });
        let driver = Driver::new(
            machine,
            shared.clone(),
            callbacks,
            commands_rx,
            commands_tx.downgrade(),
            seed,
        );
        // `Instant::now()` is read inside the task, so the base is on the runtime's clock.
        runtime.spawn(driver.run());
        PersistentConnection {
            commands: commands_tx,
            shared,
        }
    }
}

/// R13: a panicking custom retry-delay function must not kill the driver. Only the custom
/// variant runs user code; the others are kept as they are.
fn guard_retry_delay(delay: RetryDelay, server: Arc<str>) -> RetryDelay {
    match delay {
        RetryDelay::Custom(mut f) => RetryDelay::from_fn(move |failures| {
            match std::panic::catch_unwind(AssertUnwindSafe(|| f(failures))) {
                Ok(d) => d,
                Err(payload) => {
                    tracing::warn!(
                        server = %server,
                        panic = %crate::error::panic_message(&*payload),
                        "retry_delay panicked; using the default {:?}",
                        RetryDelay::DEFAULT
                    );
                    RetryDelay::DEFAULT
                }
            }
        }),
        other => other,
    }
}

/// A seed from the OS's randomness (the standard library seeds `RandomState` from it), so
/// that two processes do not retry in lockstep. Only the shell does this; the core is
/// always seeded from outside.
fn os_seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    h.finish()
}
