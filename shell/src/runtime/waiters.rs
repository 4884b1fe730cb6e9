//! One waiter's slot: filled at most once by the driver (or whoever publishes under the
//! shared lock), read once by the waiter's future. A waiter registers its slot under the
//! same lock that publishes outcomes, so it receives exactly the first value published
//! after its registration, however late it is polled (S1), and no publication can slip
//! between its check and its registration (S2).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use crate::runtime::sync::{Mutex, lock};

enum State<T> {
    /// Not filled yet; the waker of the last poll.
    Empty(Option<Waker>),
    Full(T),
    Taken,
}

/// A slot shared by one waiter's future and the list it is registered in.
pub(crate) struct Slot<T> {
    state: Mutex<State<T>>,
}

impl<T> Slot<T> {
    pub(crate) fn new() -> Arc<Slot<T>> {
        Arc::new(Slot {
            state: Mutex::new(State::Empty(None)),
        })
    }

    /// Fills the slot and wakes its waiter. A second fill is ignored.
    pub(crate) fn fill(&self, value: T) {
        let waker = {
            let mut state = lock(&self.state);
            match &mut *state {
                State::Empty(waker) => {
                    let waker = waker.take();
                    *state = State::Full(value);
                    waker
                }
                State::Full(_) | State::Taken => None,
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// True while the waiter's future still exists (so a list can drop abandoned slots).
    pub(crate) fn is_wanted(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) > 1
    }

    fn poll_take(&self, cx: &mut Context<'_>) -> Poll<T> {
        let mut state = lock(&self.state);
        match std::mem::replace(&mut *state, State::Taken) {
            State::Full(value) => Poll::Ready(value),
            State::Empty(waker) => {
                let waker = match waker {
                    Some(w) if w.will_wake(cx.waker()) => w,
                    _ => cx.waker().clone(),
                };
                *state = State::Empty(Some(waker));
                Poll::Pending
            }
            // Polled after completion: never again ready.
            State::Taken => Poll::Pending,
        }
    }
}

/// The waiter's side of a [`Slot`]: ready once the slot is filled; pending forever if it
/// never is (a `connected()` after close, R9). A waiter that is answered at once holds its
/// value without a slot, so the ready path allocates nothing.
pub(crate) struct Wait<T> {
    inner: WaitInner<T>,
}

enum WaitInner<T> {
    Ready(Option<T>),
    Slot(Arc<Slot<T>>),
}

impl<T> Wait<T> {
    pub(crate) fn new(slot: Arc<Slot<T>>) -> Wait<T> {
        Wait {
            inner: WaitInner::Slot(slot),
        }
    }

    pub(crate) fn ready(value: T) -> Wait<T> {
        Wait {
            inner: WaitInner::Ready(Some(value)),
        }
    }
}

impl<T> Unpin for Wait<T> {}

impl<T> Future for Wait<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match &mut self.get_mut().inner {
            WaitInner::Ready(value) => match value.take() {
                Some(v) => Poll::Ready(v),
                None => Poll::Pending,
            },
            WaitInner::Slot(slot) => slot.poll_take(cx),
        }
    }
}

/// Registers a new slot in `list`, first dropping the slots whose waiters are gone when the
/// list would otherwise grow, so abandoned waiters (say `connected()` under a timeout, in a
/// loop, while the service is down) cost amortised O(1) and bounded memory.
pub(crate) fn register<T>(list: &mut Vec<Arc<Slot<T>>>) -> Arc<Slot<T>> {
    if list.len() == list.capacity() {
        list.retain(Slot::is_wanted);
    }
    let slot = Slot::new();
    list.push(slot.clone());
    slot
}

/// Fills every slot of `list` with a clone of `value` and empties the list.
pub(crate) fn fill_all<T: Clone>(list: &mut Vec<Arc<Slot<T>>>, value: &T) {
    for slot in list.drain(..) {
        if slot.is_wanted() {
            slot.fill(value.clone());
        }
    }
    // An idle connection keeps no buffer for waiters that came and went.
    if list.capacity() > 4 {
        list.shrink_to(4);
    }
}
