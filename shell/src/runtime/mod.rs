//! What carries the machine on Tokio. The handles and the driver task share one state
//! (`shared`: the machine behind one lock, the waiters and the effect queue); the driver
//! task (`driver`) runs the callbacks (`callbacks`) and turns what they return into the
//! machine's inputs; `waiters` are the R9/R10 slots; `follow` turns the catalog's changes,
//! the connection's events and its age into handover and retry-now inputs (R15–R17);
//! `sync` swaps the locks and atomics for `loom`'s in the model tests (`loom`, built with
//! `--cfg pc_loom`). Nothing here decides anything: every decision is the core machine's.

pub(crate) mod callbacks;
pub(crate) mod driver;
pub(crate) mod driver_state;
pub(crate) mod follow;
#[cfg(all(test, pc_loom))]
pub(crate) mod loom;
pub(crate) mod shared;
pub(crate) mod sync;
pub(crate) mod waiters;
