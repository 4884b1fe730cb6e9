//! The synchronisation primitives of the handle/driver protocol, swapped for `loom`'s when
//! the crate is built with `RUSTFLAGS="--cfg pc_loom"`, so that the model tests in
//! `shared.rs` explore every interleaving of the real code.

#[cfg(pc_loom)]
pub(crate) use loom::sync::atomic::{AtomicU8, AtomicUsize};
#[cfg(pc_loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(not(pc_loom))]
pub(crate) use std::sync::atomic::{AtomicU8, AtomicUsize};
#[cfg(not(pc_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

/// Locks `m`, ignoring poisoning: no user code runs under our locks except the clones and
/// comparisons of `A`, `C` and `E` the machine makes, and a panic there leaves the state
/// consistent (the machine is total and the waiter lists are only appended to or drained).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
