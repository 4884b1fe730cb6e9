//! The etcd catalog's state: its settings, and what it knows of the listing (the last list
//! etcd vouched for, the watch's cache, an outage under way) shared by the catalog and its
//! watch task.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{EventType, KeyValue};
use tokio::sync::watch;
use tokio::time::Instant;

use super::*;

#[derive(Clone, Debug)]
pub(super) struct Settings {
    pub(super) options: EtcdOptions,
    pub(super) prefix: String,
    pub(super) describe: String,
    pub(super) watch_cache: bool,
    pub(super) max_staleness: Duration,
}

/// What the catalog's lookups and its watch task share: the last list etcd vouched for and
/// whether etcd answers now.
pub(super) struct Shared {
    pub(super) describe: String,
    pub(super) max_staleness: Duration,
    pub(super) known: Mutex<Known>,
    /// Bumped whenever the known list changes: what `changed()` waits on.
    pub(super) changes: watch::Sender<u64>,
    /// A lookup cut short by its caller has been logged at warn since etcd last answered.
    pub(super) cancel_warned: AtomicBool,
}

/// Key → value under the prefix.
pub(super) type Kvs = BTreeMap<Vec<u8>, Vec<u8>>;

/// The last list etcd vouched for.
#[derive(Debug, Default)]
pub(super) struct Known {
    /// Key → value under the prefix.
    pub(super) kvs: Kvs,
    /// The etcd revision of `kvs`: a range read older than what the watch applied is not
    /// stored over it.
    pub(super) revision: i64,
    /// When etcd last vouched for `kvs`; `None` until the first answer.
    pub(super) vouched: Option<Instant>,
    /// The watch is running and in sync: `kvs` is current.
    pub(super) synced: bool,
    /// etcd cannot answer (since when), while that lasts.
    pub(super) outage: Option<Outage>,
}

/// An outage: from the first failure until etcd answers again.
#[derive(Debug)]
pub(super) struct Outage {
    pub(super) since: Instant,
    /// Failures seen in it (the first logged at warn, the others at debug).
    pub(super) failures: u64,
    /// The last list has outlived `max_staleness` and that was logged.
    pub(super) expired: bool,
}

impl Shared {
    pub(super) fn known(&self) -> MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// etcd answered: `kvs` at `revision` (a range read or the watch's sync), or, with
    /// `None`, it vouched for the list held (the watch's check). Ends an outage; wakes
    /// `changed()` if the list changed.
    pub(super) fn vouched(&self, listing: Option<(i64, Kvs)>) {
        let mut known = self.known();
        let mut changed = false;
        if let Some((revision, kvs)) = listing
            && revision >= known.revision
        {
            changed = known.kvs != kvs;
            known.kvs = kvs;
            known.revision = revision;
        }
        known.vouched = Some(Instant::now());
        if let Some(outage) = known.outage.take() {
            tracing::info!(
                catalog = %self.describe,
                after = ?outage.since.elapsed(),
                failures = outage.failures,
                copies = known.kvs.len(),
                "etcd answers again: the catalog's list is fresh"
            );
        }
        drop(known);
        self.cancel_warned.store(false, Ordering::Relaxed);
        if changed {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// The watch applied `events`; wakes `changed()` if the list changed. An event a range
    /// read already reflected (at or below the kept revision) is skipped.
    pub(super) fn apply(&self, events: &[etcd_client::Event]) {
        let mut known = self.known();
        let floor = known.revision;
        let mut changed = false;
        for event in events {
            let Some(kv) = event.kv() else { continue };
            if kv.mod_revision() <= floor {
                continue;
            }
            known.revision = known.revision.max(kv.mod_revision());
            changed |= match event.event_type() {
                EventType::Put => {
                    known.kvs.insert(kv.key().to_vec(), kv.value().to_vec())
                        != Some(kv.value().to_vec())
                }
                EventType::Delete => known.kvs.remove(kv.key()).is_some(),
            };
        }
        known.vouched = Some(Instant::now());
        drop(known);
        if changed {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// etcd could not answer (`why`): starts an outage, said once at warn (what the catalog
    /// serves meanwhile); a failure within the same outage goes to debug.
    pub(super) fn failed(&self, why: &str) {
        let mut known = self.known();
        let known = &mut *known;
        if let Some(outage) = &mut known.outage {
            outage.failures += 1;
            tracing::debug!(catalog = %self.describe, error = %why, "etcd still cannot answer");
            return;
        }
        let serving = !known.kvs.is_empty()
            && known
                .vouched
                .is_some_and(|v| v.elapsed() < self.max_staleness);
        known.outage = Some(Outage {
            since: Instant::now(),
            failures: 1,
            expired: !serving,
        });
        match known.vouched {
            Some(vouched) if serving => {
                tracing::warn!(
                    catalog = %self.describe,
                    error = %why,
                    copies = known.kvs.len(),
                    vouched_ago = ?vouched.elapsed(),
                    max_staleness = ?self.max_staleness,
                    "etcd cannot answer: serving the last list it vouched for until it answers \
                     again or the list is older than max_staleness (said once per outage)"
                );
            }
            _ => tracing::warn!(
                catalog = %self.describe,
                error = %why,
                max_staleness = ?self.max_staleness,
                "etcd cannot answer and no list younger than max_staleness is known: \
                 lookups fail until it answers (said once per outage)"
            ),
        }
    }

    /// The last list, if etcd cannot answer now and the list is younger than
    /// `max_staleness` (said once at warn when it outlives it).
    pub(super) fn stale(&self) -> Option<Kvs> {
        let mut known = self.known();
        let known = &mut *known;
        let outage = known.outage.as_mut()?;
        let age = known.vouched?.elapsed();
        if known.kvs.is_empty() {
            return None;
        }
        if age < self.max_staleness {
            return Some(known.kvs.clone());
        }
        if !outage.expired {
            outage.expired = true;
            tracing::warn!(
                catalog = %self.describe,
                age = ?age,
                max_staleness = ?self.max_staleness,
                "the last list etcd vouched for is older than max_staleness: lookups fail \
                 until etcd answers again"
            );
        }
        None
    }

    /// How long ago etcd last vouched for the list, while the catalog cannot confirm it.
    pub(super) fn staleness(&self) -> Option<Duration> {
        let known = self.known();
        known.outage.as_ref()?;
        known.vouched.map(|v| v.elapsed())
    }
}

/// One range read's answer: the revision it was read at, and the keys and values.
pub(super) type Listing = (i64, Vec<KeyValue>);
