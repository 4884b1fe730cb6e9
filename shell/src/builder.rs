//! Creating a persistent connection.

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use persistent_connection_core::{Config, Machine, RetryDelay, RetryPolicy};
use tokio::sync::broadcast;

use crate::conn::closable::Closable;
use crate::events::Event;
use crate::events::EventStream;
use crate::guard;
use crate::handle::PersistentConnection;
use crate::runtime::callbacks::{Callbacks, ConnectContext};
use crate::runtime::driver::Task;
use crate::runtime::driver_state::Driver;
use crate::runtime::follow::{self, Plan};
use crate::runtime::shared::Shared;

/// How long `get_address` may take before the attempt fails with
/// [`Error::LookupTimedOut`](crate::Error::LookupTimedOut) (S5): 10 s. A lookup that never
/// answers would otherwise stop all reconnecting.
pub const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `connect` may take before the attempt fails with
/// [`Error::TimedOut`](crate::Error::TimedOut) (S5): 10 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The default number of events an [`events`](PersistentConnection::events) receiver may
/// fall behind before it lags.
pub const DEFAULT_EVENT_CAPACITY: usize = 64;

/// The largest [`Builder::event_capacity`].
pub const MAX_EVENT_CAPACITY: usize = 1 << 16;

/// How long a connection replaced by a handover stays open by default, so that calls in
/// flight on it may finish (R15): 10 s.
pub const DEFAULT_HANDOVER_GRACE: Duration = Duration::from_secs(10);

/// Sets up a [`PersistentConnection`]; made by [`PersistentConnection::builder`].
///
/// ```
/// use std::time::Duration;
/// use persistent_connection::conn::CloseSignal;
/// use persistent_connection::{PersistentConnection, RetryPolicy};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let pc = PersistentConnection::builder(
///     "service",
///     || async { Ok::<_, String>(1u16) },
///     |_port, _cx| async { Ok(CloseSignal::new()) },
/// )
/// .retry_policy(RetryPolicy::constant(Duration::from_millis(500)).non_random())
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
    /// Observers set up before the driver starts (S4).
    events: Option<broadcast::Sender<Event<A, C, E>>>,
    /// What the follower watches (R15–R17): a catalog, the maximum age.
    follow: Plan<A, C>,
}

impl<A, C, E> fmt::Debug for Builder<A, C, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("server_name", &self.server_name)
            .field("retry", &self.retry)
            .field("seed", &self.seed)
            .field("lookup_timeout", &self.callbacks.lookup_timeout)
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
            callbacks: Callbacks::new(
                get_address,
                connect,
                DEFAULT_LOOKUP_TIMEOUT,
                DEFAULT_CONNECT_TIMEOUT,
            ),
            retry: RetryPolicy::default(),
            seed: None,
            event_capacity: DEFAULT_EVENT_CAPACITY,
            events: None,
            follow: Plan {
                catalog: None,
                max_age: None,
                grace: DEFAULT_HANDOVER_GRACE,
                drain: None,
            },
        }
    }

    /// Follow `catalog` (the one `get_address` looks up, with the same `pick`): when the
    /// copy the current connection goes to is withdrawn from it, hand over to another copy
    /// (R15, make-before-break: the old connection serves until the new one is up); with
    /// [`Pick::InOrder`](crate::catalog::Pick::InOrder), fail back when a copy listed
    /// before the current one is listed again; while waiting between attempts, try a newly
    /// listed copy at once (R16); and when a connection that died young leaves another
    /// listed copy, try it without waiting out the retry delay (R17). A catalog that
    /// cannot watch ([`Catalog::changed`](crate::catalog::Catalog::changed) never
    /// resolves) still gives R17.
    ///
    /// [`PersistentConnection::with_catalog`] sets this up for you; call it yourself when
    /// you build `get_address` from the catalog your own way.
    pub fn follow<K>(mut self, catalog: K, pick: crate::catalog::Pick) -> Self
    where
        K: crate::catalog::Catalog<Address = A>,
    {
        self.follow.catalog = Some((Box::new(Arc::new(catalog)), pick));
        self
    }

    /// Stop following the catalog that [`PersistentConnection::with_catalog`] follows by
    /// default: the connection then moves only when it breaks, as in the original.
    pub fn unfollow(mut self) -> Self {
        self.follow.catalog = None;
        self
    }

    /// Replace every connection once it is about `age` old (jittered ±20%), by a handover
    /// (R15, reason `MaxAge`): so that load spreads again over the copies after a deploy
    /// or a scale-out. Off by default.
    pub fn max_connection_age(mut self, age: Duration) -> Self {
        self.follow.max_age = Some(age);
        self
    }

    /// Hand over (R15, reason `Drain`) when `draining(&connection)` resolves for the
    /// current connection: the server said it drains (HTTP/2's `GOAWAY`, a lame-duck
    /// notice), so the next connection is made now while calls in flight finish on this
    /// one. For the HTTP/2 connection type:
    /// `.handover_on(|c: &Http2Connection<_>| c.drain_notice())` (feature `http2`).
    ///
    /// ```
    /// use persistent_connection::conn::CloseSignal;
    /// use persistent_connection::PersistentConnection;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let pc = PersistentConnection::builder(
    ///     "service",
    ///     || async { Ok::<_, String>(1u16) },
    ///     |_port, _cx| async { Ok(CloseSignal::new()) },
    /// )
    /// // Here: when closing begins, which is what an HTTP/2 GOAWAY does to `Http2Connection`.
    /// .handover_on(|c: &CloseSignal| c.closing())
    /// .build();
    /// pc.connected().await;
    /// pc.close().await;
    /// # }
    /// ```
    pub fn handover_on<F, Fut>(mut self, draining: F) -> Self
    where
        F: Fn(&C) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.follow.drain = Some(Box::new(move |c: &C| Box::pin(draining(c))));
        self
    }

    /// How long a connection replaced by a handover stays open, so that calls in flight on
    /// it may finish (R15): default [`DEFAULT_HANDOVER_GRACE`].
    pub fn handover_grace(mut self, grace: Duration) -> Self {
        self.follow.grace = grace;
        self
    }

    /// The seed's `on_event`: called with every event and awaited before the next step.
    /// A panic in it counts as handled and is logged (R13).
    pub fn on_event<F, Fut>(mut self, on_event: F) -> Self
    where
        F: Fn(Event<A, C, E>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_event = Arc::new(on_event);
        self.callbacks.on_event = Some(Arc::new(move |e| {
            let on_event = on_event.clone();
            Box::pin(async move {
                match guard::call("on_event", || on_event(e)) {
                    Ok(fut) => guard::run("on_event", fut).await,
                    Err(panic) => Err(panic),
                }
                .map_err(|panic| panic.message)
            })
        }));
        self
    }

    /// The retry policy (R2, R7): base delay and jitter, the original's constant 10 s ±30%
    /// by default. Takes a [`RetryPolicy`] (e.g. [`RetryPolicy::grpc`], or
    /// `RetryPolicy::constant(d).non_random()`), a `Duration` (constant, ±30%) or a
    /// [`RetryDelay`] (with ±30%). With [`retry_delay_fn`](Builder::retry_delay_fn), one of
    /// the two ways to set it.
    ///
    /// The delay separates the *starts* of attempts: a connection that dies younger than
    /// the delay waits for the rest of it before the next attempt (R6), unless another
    /// listed copy can be tried at once (R17). See the [guide](crate::guide).
    pub fn retry_policy(mut self, policy: impl Into<RetryPolicy>) -> Self {
        self.retry = policy.into();
        self
    }

    /// The seed's `retry_delay: unit -> span`: called once per attempt (R2), keeping the
    /// jitter of the policy set before (±30% by default). A panic in it is caught and
    /// logged, and the default 10 s is used for that attempt.
    pub fn retry_delay_fn(mut self, f: impl FnMut() -> Duration + Send + 'static) -> Self {
        let mut f = f;
        self.retry.delay = RetryDelay::from_fn(move |_| f());
        self
    }

    /// The seed of the jitter's generator; the default is drawn from OS randomness. The
    /// same seed gives the same delays (R7).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Fail an attempt whose `connect` has not finished within `timeout`
    /// ([`Error::TimedOut`](crate::Error::TimedOut)); its future is dropped (S5). Default:
    /// [`DEFAULT_CONNECT_TIMEOUT`] (10 s). `Duration::MAX` means no timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.callbacks.connect_timeout = timeout;
        self
    }

    /// Fail an attempt whose `get_address` has not finished within `timeout`
    /// ([`Error::LookupTimedOut`](crate::Error::LookupTimedOut)); its future is dropped
    /// (S5). Default: [`DEFAULT_LOOKUP_TIMEOUT`] (10 s). `Duration::MAX` means no timeout.
    pub fn lookup_timeout(mut self, timeout: Duration) -> Self {
        self.callbacks.lookup_timeout = timeout;
        self
    }

    /// A stream of every event from the very first (`AttemptingToConnect`), set up before
    /// the driver starts, so that no event can be missed (S4).
    /// [`PersistentConnection::events`] sees only the events after its call.
    ///
    /// ```
    /// use futures_util::StreamExt;
    /// use persistent_connection::core::EventKind;
    /// use persistent_connection::conn::CloseSignal;
    /// use persistent_connection::PersistentConnection;
    ///
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() {
    /// let mut builder = PersistentConnection::builder(
    ///     "observed",
    ///     || async { Ok::<_, String>(80u16) },
    ///     |_port, _cx| async { Ok(CloseSignal::new()) },
    /// );
    /// let events = builder.events();
    /// let pc = builder.build();
    /// pc.connected().await;
    /// pc.close().await;
    /// // Every event, and the stream ends once close has finished.
    /// let kinds: Vec<_> = events.map(|e| e.unwrap().kind()).collect().await;
    /// assert_eq!(
    ///     kinds,
    ///     [
    ///         EventKind::AttemptingToConnect,
    ///         EventKind::ObtainedAddress,
    ///         EventKind::Connected,
    ///         EventKind::Disconnected,
    ///     ]
    /// );
    /// # }
    /// ```
    pub fn events(&mut self) -> EventStream<A, C, E> {
        let capacity = self.event_capacity;
        EventStream::new(
            self.events
                .get_or_insert_with(|| broadcast::Sender::new(capacity))
                .subscribe(),
            capacity,
        )
    }

    /// How far an [`events`](PersistentConnection::events) receiver may fall behind before
    /// it lags: default [`DEFAULT_EVENT_CAPACITY`], clamped to `1..=`[`MAX_EVENT_CAPACITY`]
    /// (the buffer is allocated by the first subscriber). Set it before
    /// [`events`](Builder::events).
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
            mut events,
            follow,
        } = self;
        let follower_events = (!follow.is_empty()).then(|| {
            let sender = events.get_or_insert_with(|| broadcast::Sender::new(event_capacity));
            EventStream::new(sender.subscribe(), event_capacity)
        });
        let seed = seed.unwrap_or_else(os_seed);
        let retry = RetryPolicy {
            delay: guard_retry_delay(retry.delay, server_name.clone()),
            jitter: retry.jitter,
        };
        let machine = Machine::new(Config { seed, retry });
        let shared = Arc::new(Shared::new(server_name, machine, events, event_capacity));
        shared.set_handover_grace(follow.grace);
        let task = Task::new(shared.clone(), Driver::new(callbacks, seed));
        // `Instant::now()` is read inside the task, so the base is on the runtime's clock.
        runtime.spawn(task);
        if let Some(events) = follower_events {
            // Ends with the events, once close has finished (S4).
            runtime.spawn(follow::run(shared.clone(), events, follow, seed));
        }
        PersistentConnection { shared }
    }
}

impl<A, C, E> PersistentConnection<A, C, E>
where
    A: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
    C: Closable + Clone + fmt::Debug + Send + Sync + 'static,
    E: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
{
    /// A builder with the original's defaults: no `on_event`, `retry_delay` a constant 10 s
    /// jittered ±30%, a seed from OS randomness; and this library's lookup and connect
    /// timeouts of 10 s each (S5).
    ///
    /// `get_address` is called before every attempt; `connect(address, context)` makes a
    /// connection (see [`ConnectContext`]). Both futures may fail with `E`, may panic (the
    /// attempt then fails with [`Error::Panicked`](crate::Error::Panicked), R13) and are dropped when close cancels
    /// the attempt (R8).
    pub fn builder<G, GF, K, KF>(
        server_name: impl Into<Arc<str>>,
        get_address: G,
        connect: K,
    ) -> Builder<A, C, E>
    where
        G: Fn() -> GF + Send + Sync + 'static,
        GF: Future<Output = Result<A, E>> + Send + 'static,
        K: Fn(A, ConnectContext<E>) -> KF + Send + Sync + 'static,
        KF: Future<Output = Result<C, E>> + Send + 'static,
    {
        Builder::new(server_name.into(), get_address, connect)
    }

    /// A builder whose addresses come from `catalog`, picked with `pick`, and which
    /// *follows* the catalog ([`Builder::follow`]): a copy withdrawn from the catalog is
    /// left by a make-before-break handover (R15), a newly listed copy ends a wait between
    /// attempts (R16), and a connection that died young is replaced from another listed
    /// copy at once (R17). This is the way to use a catalog; `catalog.get_address(pick)`
    /// with [`builder`](PersistentConnection::builder) gives the lookup alone.
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use persistent_connection::catalog::{Pick, StaticList};
    /// use persistent_connection::{IoError, PersistentConnection, TcpConnection};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let a = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    /// let b = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    /// let (addr_a, addr_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    /// let catalog = StaticList::new([addr_a, addr_b]);
    /// let pc = PersistentConnection::<SocketAddr, TcpConnection, IoError>::with_catalog(
    ///     "echo",
    ///     catalog.clone(),
    ///     Pick::InOrder,
    ///     |addr: SocketAddr, _cx| TcpConnection::connect(addr),
    /// )
    /// .build();
    /// assert_eq!(pc.connected().await.peer_addr(), addr_a);
    ///
    /// // `a` is withdrawn (a deploy drains it): the connection moves to `b` before the
    /// // one to `a` is closed, with no instant without a current connection.
    /// catalog.replace([addr_b]);
    /// while pc.current_connection().map(|c| c.peer_addr()) != Some(addr_b) {
    ///     tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    /// }
    /// assert_eq!(pc.stats().handovers, 1);
    /// assert_eq!(pc.stats().disconnections, 0);
    /// pc.close().await;
    /// # }
    /// ```
    pub fn with_catalog<K, KC, KF>(
        server_name: impl Into<Arc<str>>,
        catalog: KC,
        pick: crate::catalog::Pick,
        connect: K,
    ) -> Builder<A, C, E>
    where
        KC: crate::catalog::Catalog<Address = A> + Clone,
        E: From<crate::catalog::CatalogError> + 'static,
        K: Fn(A, ConnectContext<E>) -> KF + Send + Sync + 'static,
        KF: Future<Output = Result<C, E>> + Send + 'static,
    {
        let get_address = crate::catalog::Catalog::get_address::<E>(catalog.clone(), pick);
        Builder::new(server_name.into(), get_address, connect).follow(catalog, pick)
    }
}

#[cfg(all(test, not(pc_loom)))]
impl<A, C, E> Builder<A, C, E>
where
    A: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
    C: Closable + Clone + fmt::Debug + Send + Sync + 'static,
    E: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
{
    /// The driver task `build` would spawn, unspawned (for the size table below).
    pub(crate) fn driver_for_test(self) -> Task<A, C, E> {
        let machine = Machine::new(Config {
            seed: 0,
            retry: self.retry,
        });
        let shared = Arc::new(Shared::new(self.server_name, machine, None, 1));
        Task::new(shared, Driver::new(self.callbacks, 0))
    }
}

/// R13: a panicking custom retry-delay function must not kill the driver. Only the custom
/// variant runs user code; the others are kept as they are.
fn guard_retry_delay(delay: RetryDelay, server: Arc<str>) -> RetryDelay {
    match delay {
        RetryDelay::Custom(mut f) => {
            RetryDelay::from_fn(
                move |failures| match guard::call("retry_delay", || f(failures)) {
                    Ok(d) => d,
                    Err(panic) => {
                        tracing::warn!(
                            server = %server,
                            panic = %panic.message,
                            "retry_delay panicked; using the default {:?}",
                            RetryDelay::DEFAULT
                        );
                        RetryDelay::DEFAULT
                    }
                },
            )
        }
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

/// The inline sizes of what an idle persistent connection holds, for the memory table of
/// BENCHMARKS.md: `cargo test -p persistent-connection --lib sizes -- --nocapture`.
#[cfg(all(test, not(pc_loom)))]
mod sizes {
    use std::mem::size_of;
    use std::net::SocketAddr;

    use persistent_connection_core::ConnId;

    use crate::conn::TcpConnection;
    use crate::error::IoError;
    use crate::handle::PersistentConnection;
    use crate::runtime::callbacks::{BoxFuture, Callbacks};
    use crate::runtime::driver_state::Driver;
    use crate::runtime::shared::{CoreEffect, Shared};

    type A = SocketAddr;
    type C = TcpConnection;
    type E = IoError;

    #[test]
    fn sizes() {
        let rows: [(&str, usize); 9] = [
            (
                "Machine (core)",
                size_of::<persistent_connection_core::Machine<A, C, crate::error::Error<E>>>(),
            ),
            (
                "  of which ChaCha8Rng",
                size_of::<persistent_connection_core::rand_chacha::ChaCha8Rng>(),
            ),
            ("Effect (one queue slot)", size_of::<CoreEffect<A, C, E>>()),
            (
                "Shared (with the machine and the Driver)",
                size_of::<Shared<A, C, E>>(),
            ),
            ("  of which Driver", size_of::<Driver<A, C, E>>()),
            ("tokio Sleep (retry timer)", size_of::<tokio::time::Sleep>()),
            ("Vec of close futures", size_of::<Vec<BoxFuture<ConnId>>>()),
            ("Callbacks", size_of::<Callbacks<A, C, E>>()),
            (
                "Slot<C> (one waiter)",
                size_of::<crate::runtime::waiters::Slot<C>>(),
            ),
        ];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let driver = PersistentConnection::builder(
            "sizes",
            || async { Ok::<A, E>(([127, 0, 0, 1], 1).into()) },
            |addr: A, _cx| TcpConnection::connect(addr),
        )
        .driver_for_test();
        let task = std::mem::size_of_val(&driver);
        for (what, bytes) in rows {
            println!("{what:<40} {bytes:>6} bytes");
        }
        println!("{:<40} {task:>6} bytes", "driver task's future (Task)");
        assert_eq!(task, size_of::<usize>(), "the task holds one pointer");
    }
}
