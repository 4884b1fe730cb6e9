//! The observers' stream of events (S4).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::Event;

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
    inner: BroadcastStream<Event<A, C, E>>,
}

impl<A, C, E> fmt::Debug for EventStream<A, C, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}

impl<A, C, E> EventStream<A, C, E>
where
    A: Clone + Send + 'static,
    C: Clone + Send + 'static,
    E: Clone + Send + 'static,
{
    pub(crate) fn new(receiver: broadcast::Receiver<Event<A, C, E>>) -> Self {
        EventStream {
            inner: BroadcastStream::new(receiver),
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
        self.inner
            .poll_next_unpin(cx)
            .map(|item| item.map(|r| r.map_err(|BroadcastStreamRecvError::Lagged(n)| Lagged(n))))
    }
}
