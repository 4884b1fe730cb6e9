//! The etcd catalog's watch: one range read, then a watch from its revision, keeping the
//! shared cache in step; and how a listing is parsed into addresses.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, GetOptions, WatchOptions};
use tokio::time::Instant;

use super::state::*;
use super::*;
use crate::catalog::CatalogError;

/// A range read's answer as the catalog keeps it.
pub(super) fn listing_map((revision, kvs): Listing) -> (i64, Kvs) {
    let map = kvs
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
        .collect();
    (revision, map)
}

/// The kept listing as `(key, value)` pairs, in key order.
pub(super) fn entries(kvs: &Kvs) -> impl Iterator<Item = (&[u8], &[u8])> {
    kvs.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
}

/// Why the watch broke, in words that do not call it a lookup.
fn watch_error(settings: &Settings, e: &etcd_client::Error) -> String {
    settings.options.describe(&settings.options.endpoints, e)
}

/// The watch task: range read, then watch from the next revision, applying every change
/// to the list; on any error, mark the watch out of sync (lookups then serve the last list
/// as stale, see [`Shared::failed`]) and start over after a pause.
pub(super) async fn watch_prefix(settings: Settings, shared: Arc<Shared>) {
    let pause = Duration::from_millis(200);
    loop {
        let why = sync_and_watch(&settings, &shared).await;
        shared.known().synced = false;
        shared.failed(&format!("the etcd watch broke: {why}"));
        tokio::time::sleep(pause).await;
    }
}

/// Syncs the list (a range read), then applies the watch's changes to it until the watch
/// breaks; returns why it broke.
pub(super) async fn sync_and_watch(settings: &Settings, shared: &Shared) -> String {
    let timeout = settings.options.timeout;
    let options = match settings.options.connect_options() {
        Ok(o) => o
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1))
            .with_keep_alive_while_idle(true),
        Err(e) => return watch_error(settings, &e),
    };
    let read = async {
        let mut client = Client::connect(&settings.options.endpoints, Some(options)).await?;
        let mut response = client
            .get(
                settings.prefix.as_bytes(),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let revision = response.header().map_or(0, |h| h.revision());
        let kvs = response.take_kvs();
        let stream = client
            .watch(
                settings.prefix.as_bytes(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await?;
        Ok::<_, etcd_client::Error>((client, revision, kvs, stream))
    };
    let (mut client, revision, kvs, mut stream) = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(ready)) => ready,
        Ok(Err(e)) => return watch_error(settings, &e),
        Err(_) => return format!("syncing timed out after {timeout:?}"),
    };
    shared.vouched(Some(listing_map((revision, kvs))));
    shared.known().synced = true;
    // Every half timeout, the cluster must vouch for the copy: a linearizable count of the
    // prefix, which fails at once without quorum (no leader). A watch stream alone can stay
    // open for seconds on a member that died or lost its cluster (found by drill 6).
    let every = (timeout / 2).max(Duration::from_millis(50));
    let mut vouch = tokio::time::interval_at(Instant::now() + every, every);
    vouch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let response = tokio::select! {
            message = stream.message() => match message {
                Ok(Some(response)) => response,
                Ok(None) => return "the watch stream ended".to_owned(),
                Err(e) => return watch_error(settings, &e),
            },
            _ = vouch.tick() => {
                let count = client.get(
                    settings.prefix.as_bytes(),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                );
                match tokio::time::timeout(every, count).await {
                    Ok(Ok(_)) => {
                        shared.vouched(None);
                        continue;
                    }
                    Ok(Err(e)) => return watch_error(settings, &e),
                    Err(_) => {
                        return format!("the cluster did not vouch for the list within {every:?}");
                    }
                }
            }
        };
        if response.canceled() {
            return format!("etcd cancelled the watch: {}", response.cancel_reason());
        }
        shared.apply(response.events());
    }
}

/// Parses a listing of `(key, value)` pairs: the values that parse as `A`, in key order; a
/// warning for each that does not.
pub(super) fn parse_listing<'a, A>(
    describe: &str,
    entries: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<Vec<A>, CatalogError>
where
    A: FromStr,
    A::Err: fmt::Display,
{
    let mut listed = Vec::new();
    let mut first_bad = None;
    for (key, value) in entries {
        let value = String::from_utf8_lossy(value);
        match value.trim().parse::<A>() {
            Ok(a) => listed.push(a),
            Err(e) => {
                let key = String::from_utf8_lossy(key).into_owned();
                tracing::warn!(
                    catalog = describe,
                    key = %key,
                    value = %value,
                    error = %e,
                    "skipping a malformed address in the catalog"
                );
                first_bad.get_or_insert(CatalogError::Malformed {
                    key,
                    value: value.into_owned(),
                    reason: e.to_string(),
                });
            }
        }
    }
    if listed.is_empty() {
        return Err(first_bad.unwrap_or_else(|| CatalogError::Empty {
            catalog: describe.to_owned(),
        }));
    }
    Ok(listed)
}
