//! The follower: a task beside the driver that turns what happens around a persistent
//! connection into the machine's handover and retry-now inputs (R15–R17). It watches the
//! catalog ([`Catalog::changed`]) and the connection's own events, and times the
//! connection's maximum age. It decides nothing the machine decides: it tells the machine
//! *that* the current copy was withdrawn, a preferred copy came back, a new or another copy
//! is listed, or the connection is old; the machine decides whether and when an attempt
//! begins.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use persistent_connection_core::rand_chacha::ChaCha8Rng;
use persistent_connection_core::rand_chacha::rand_core::SeedableRng;
use persistent_connection_core::{HandoverReason, Input, Jitter, RetryNowReason};

use crate::catalog::{Catalog, CatalogError, Pick};
use crate::events::{Event, EventStream};
use crate::runtime::shared::Shared;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The maximum connection age is jittered by this much (R7's jitter, ±20%), so that
/// connections made together are not replaced together.
const AGE_JITTER: Jitter = Jitter::Percent(20);

/// A catalog seen through its address type only, so that the follower is not generic over
/// the catalog's type.
pub(crate) trait Listing<A>: Send + Sync + 'static {
    fn lookup(&self) -> BoxFuture<Result<Vec<A>, CatalogError>>;
    fn changed(&self) -> BoxFuture<()>;
}

impl<K: Catalog> Listing<K::Address> for Arc<K> {
    fn lookup(&self) -> BoxFuture<Result<Vec<K::Address>, CatalogError>> {
        let catalog = self.clone();
        Box::pin(async move { Catalog::lookup(&*catalog).await })
    }

    fn changed(&self) -> BoxFuture<()> {
        Box::pin(Catalog::changed(&**self))
    }
}

/// A connection's own drain signal (`Builder::handover_on`).
pub(crate) type DrainSignal<C> = Box<dyn Fn(&C) -> BoxFuture<()> + Send + Sync + 'static>;

/// What the follower watches, set on the builder.
pub(crate) struct Plan<A, C> {
    /// The catalog followed, with the pick of its `get_address` (fail back is for
    /// [`Pick::InOrder`] only).
    pub(crate) catalog: Option<(Box<dyn Listing<A>>, Pick)>,
    /// [`Builder::max_connection_age`](crate::Builder::max_connection_age).
    pub(crate) max_age: Option<Duration>,
    /// How long a replaced connection stays open (R15).
    pub(crate) grace: Duration,
    /// [`Builder::handover_on`](crate::Builder::handover_on): resolves when the server
    /// says the connection drains (HTTP/2's GOAWAY, a lame-duck notice).
    pub(crate) drain: Option<DrainSignal<C>>,
}

impl<A, C> Plan<A, C> {
    pub(crate) fn is_empty(&self) -> bool {
        self.catalog.is_none() && self.max_age.is_none() && self.drain.is_none()
    }
}

/// Runs until the persistent connection's events end (close finished).
pub(crate) async fn run<A, C, E>(
    shared: Arc<Shared<A, C, E>>,
    mut events: EventStream<A, C, E>,
    plan: Plan<A, C>,
    seed: u64,
) where
    A: Clone + PartialEq + std::fmt::Debug + Send + Sync + 'static,
    C: Clone + Send + Sync + 'static,
    E: Clone + PartialEq + Send + Sync + 'static,
{
    let Plan {
        catalog,
        max_age,
        grace,
        drain,
    } = plan;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x666f_6c6c_6f77_6572); // "follower"
    let never = || -> BoxFuture<()> { Box::pin(std::future::pending()) };
    let mut changed = catalog.as_ref().map_or_else(never, |(c, _)| c.changed());
    // The current connection's drain signal, re-armed for each new current connection.
    let mut draining: BoxFuture<()> = never();
    // The listing as last seen, to tell a copy that is new (or back) from one that was
    // there all along.
    let mut previous: Option<Vec<A>> = match &catalog {
        Some((catalog, _)) => catalog.lookup().await.ok(),
        None => None,
    };
    let mut current: Option<A> = None;
    let mut old_at: Option<tokio::time::Instant> = None;
    let server = shared.server_name.clone();
    let handover = |reason: HandoverReason| {
        tracing::info!(server = %server, reason = reason.as_str(), "handover asked for");
        shared.feed_now_from_handle(Input::Handover { reason, grace });
    };
    let retry_now = |reason: RetryNowReason| {
        tracing::debug!(server = %shared.server_name, reason = reason.as_str(), "retry now asked for");
        shared.feed_now_from_handle(Input::RetryNow { reason });
    };
    loop {
        let age = async {
            match old_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = events.next() => match event {
                None => return,
                Some(Err(_lagged)) => current = shared.current_address(),
                Some(Ok(Event::Connected(c) | Event::HandedOver { connection: c, .. })) => {
                    if let Some(drain) = &drain {
                        draining = drain(&c);
                    }
                    current = shared.current_address();
                    old_at = max_age.map(|age| {
                        tokio::time::Instant::now() + AGE_JITTER.apply(age, &mut rng)
                    });
                }
                Some(Ok(Event::Disconnected)) => {
                    old_at = None;
                    draining = never();
                    let lost = current.take();
                    // R17: another listed copy need not wait out the lost one's delay.
                    if let Some((catalog, _)) = &catalog
                        && let Ok(listed) = catalog.lookup().await
                    {
                        if listed.iter().any(|a| Some(a) != lost.as_ref()) {
                            retry_now(RetryNowReason::AnotherCopy);
                        }
                        previous = Some(listed);
                    }
                }
                Some(Ok(_)) => {}
            },
            () = &mut changed => {
                let Some((catalog, pick)) = &catalog else { continue };
                changed = catalog.changed();
                // A catalog that cannot be read says nothing about the copies: keep going.
                let Ok(listed) = catalog.lookup().await else { continue };
                let was = previous.replace(listed.clone());
                let is_new = |a: &A| was.as_ref().is_some_and(|w| !w.contains(a));
                match shared.current_address() {
                    Some(cur) => {
                        let pending = shared.pending_handover();
                        match listed.iter().position(|a| *a == cur) {
                            None if pending.is_none() => handover(HandoverReason::Withdrawn),
                            None => {}
                            Some(_) if pending == Some(HandoverReason::Withdrawn) => {
                                // Listed again: the cause of the handover is gone.
                                shared.feed_now_from_handle(Input::CancelHandover);
                            }
                            Some(at)
                                if *pick == Pick::InOrder
                                    && pending.is_none()
                                    && listed[..at].iter().any(is_new) =>
                            {
                                handover(HandoverReason::FailBack);
                            }
                            Some(_) => {}
                        }
                    }
                    None => {
                        if listed.iter().any(is_new) {
                            retry_now(RetryNowReason::NewCopy);
                        }
                    }
                }
            },
            () = &mut draining => {
                draining = never();
                handover(HandoverReason::Drain);
            },
            () = age => {
                old_at = None;
                if shared.pending_handover().is_none() {
                    handover(HandoverReason::MaxAge);
                }
            },
        }
    }
}
