//! The observers' stream of events (S4).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::future::Future;

use futures_util::Stream;
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::error::Error;

/// An observer fell behind and missed this many events (the oldest ones); the stream goes
/// on with the oldest event it still holds. Raise
/// [`Builder::event_capacity`](crate::Builder::event_capacity) or keep up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lagged(pub u64);

impl fmt::Display for Lagged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the observer fell behind and missed {} events", self.0)
    }
}

impl std::error::Error for Lagged {}

/// Every event of a persistent connection, for observers besides `on_event`: a
/// [`Stream`] of `Result<Event, Lagged>`, made by
/// [`PersistentConnection::events`](crate::PersistentConnection::events) or, to see every
/// event from the first, by [`Builder::events`](crate::Builder::events) before the
/// driver starts.
///
/// - An observer never holds up the persistent connection: one that falls behind by more
///   than the builder's [`event_capacity`](crate::Builder::event_capacity) gets
///   `Err(Lagged(n))`, saying how many events it missed, never a silent gap.
/// - The stream ends (`None`) after the last event of a closed persistent connection,
///   once close has finished (R8); one made after that is empty.
pub struct EventStream<A, C, E> {
    /// The receiver, or `None` while `wait` holds it.
    rx: Option<broadcast::Receiver<Event<A, C, E>>>,
    /// Waiting for the next event; allocated only while the receiver has nothing to read.
    wait: Option<Wait<A, C, E>>,
    /// The builder's `event_capacity`: the channel rounds it up to a power of two, so the
    /// stream counts the lag itself.
    capacity: usize,
    /// An event read after skipping older ones: given after the `Lagged`.
    stashed: Option<Event<A, C, E>>,
}

type Received<A, C, E> = (
    Result<Event<A, C, E>, RecvError>,
    broadcast::Receiver<Event<A, C, E>>,
);
type Wait<A, C, E> = Pin<Box<dyn Future<Output = Received<A, C, E>> + Send>>;

// Nothing is structurally pinned: the waiting future is boxed.
impl<A, C, E> Unpin for EventStream<A, C, E> {}

impl<A, C, E> fmt::Debug for EventStream<A, C, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl<A, C, E> EventStream<A, C, E>
where
    A: Clone + Send + 'static,
    C: Clone + Send + 'static,
    E: Clone + Send + 'static,
{
    pub(crate) fn new(receiver: broadcast::Receiver<Event<A, C, E>>, capacity: usize) -> Self {
        EventStream {
            rx: Some(receiver),
            wait: None,
            capacity: capacity.max(1),
            stashed: None,
        }
    }

    /// The next event, `Err(Lagged(n))` after missing `n`, or `None` once the stream has
    /// ended. The same as [`StreamExt::next`](futures_util::StreamExt::next), without the
    /// import.
    pub async fn recv(&mut self) -> Option<Result<Event<A, C, E>, Lagged>> {
        self.next().await
    }
}

impl<A, C, E> Stream for EventStream<A, C, E>
where
    A: Clone + Send + 'static,
    C: Clone + Send + 'static,
    E: Clone + Send + 'static,
{
    type Item = Result<Event<A, C, E>, Lagged>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(event) = this.stashed.take() {
            return Poll::Ready(Some(Ok(event)));
        }
        let mut missed = 0u64;
        loop {
            let mut from_wait = None;
            if let Some(wait) = this.wait.as_mut() {
                match wait.as_mut().poll(cx) {
                    Poll::Ready((r, rx)) => {
                        this.wait = None;
                        this.rx = Some(rx);
                        from_wait = Some(r);
                    }
                    Poll::Pending => return lag_or_pending(missed),
                }
            }
            let (received, rx) = match (from_wait, this.rx.as_mut()) {
                (Some(r), Some(rx)) => (r, rx),
                (_, Some(rx)) => match rx.try_recv() {
                    Ok(e) => (Ok(e), rx),
                    Err(TryRecvError::Lagged(n)) => (Err(RecvError::Lagged(n)), rx),
                    Err(TryRecvError::Closed) => (Err(RecvError::Closed), rx),
                    Err(TryRecvError::Empty) => {
                        if missed > 0 {
                            return Poll::Ready(Some(Err(Lagged(missed))));
                        }
                        let mut rx = this.rx.take().expect("matched just above");
                        this.wait = Some(Box::pin(async move {
                            let received = rx.recv().await;
                            (received, rx)
                        }));
                        continue;
                    }
                },
                (_, None) => return Poll::Ready(None),
            };
            match received {
                // Older than the `capacity` newest events: a channel of that capacity would
                // have dropped it (S4).
                Ok(_) if rx.len() >= this.capacity => missed += 1,
                Ok(event) if missed > 0 => {
                    this.stashed = Some(event);
                    return Poll::Ready(Some(Err(Lagged(missed))));
                }
                Ok(event) => return Poll::Ready(Some(Ok(event))),
                Err(RecvError::Lagged(n)) => missed += n,
                Err(RecvError::Closed) => {
                    this.rx = None;
                    return Poll::Ready((missed > 0).then_some(Err(Lagged(missed))));
                }
            }
        }
    }
}

fn lag_or_pending<T>(missed: u64) -> Poll<Option<Result<T, Lagged>>> {
    if missed > 0 {
        Poll::Ready(Some(Err(Lagged(missed))))
    } else {
        Poll::Pending
    }
}

/// An event as `on_event` and [`PersistentConnection::events`](crate::PersistentConnection::events)
/// see it: the core's event with the shell's [`Error`] around the user's error.
pub type Event<A, C, E> = persistent_connection_core::Event<A, C, Error<E>>;
