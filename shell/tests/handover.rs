//! The Tokio shell's handover and retry now (R15–R17, docs/behaviour.md), on Tokio's
//! paused clock: a user's `handover()`, a copy withdrawn from a followed catalog, fail
//! back, the maximum connection age, `retry_now()`, a newly listed copy, and another copy
//! not held up by R6. Copies are numbers; a connection is a `WithCloseSignal<u16>`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use persistent_connection::catalog::{Pick, StaticList};
use persistent_connection::conn::{CloseSignal, WithCloseSignal};
use persistent_connection::core::HandoverReason;
use persistent_connection::{Closable, Event, PersistentConnection};
use tokio::time::Instant;

type Conn = WithCloseSignal<u16>;
type Pc = PersistentConnection<u16, Conn, String>;

/// The copies that accept connections, every connection made, and what happened when.
#[derive(Clone, Default)]
struct World {
    up: Arc<Mutex<BTreeSet<u16>>>,
    made: Arc<Mutex<Vec<Conn>>>,
    log: Arc<Mutex<Vec<(u64, String)>>>,
}

impl World {
    fn new(up: impl IntoIterator<Item = u16>) -> World {
        let w = World::default();
        w.up.lock().unwrap().extend(up);
        w
    }

    fn set_up(&self, copies: impl IntoIterator<Item = u16>) {
        *self.up.lock().unwrap() = copies.into_iter().collect();
    }

    fn events(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(_, e)| e.clone())
            .collect()
    }

    fn at(&self, event: &str) -> Option<u64> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .find(|(_, e)| e == event)
            .map(|(t, _)| *t)
    }

    fn made_to(&self, copy: u16) -> Vec<Conn> {
        self.made
            .lock()
            .unwrap()
            .iter()
            .filter(|c| *c.get() == copy)
            .cloned()
            .collect()
    }

    /// A persistent connection following `list` (InOrder), retry delay `delay` without
    /// jitter, grace 5 s.
    fn follow(
        &self,
        list: &StaticList<u16>,
        delay: Duration,
    ) -> persistent_connection::Builder<u16, Conn, String> {
        let (up, made, log) = (self.up.clone(), self.made.clone(), self.log.clone());
        let start = Instant::now();
        PersistentConnection::with_catalog(
            "handover",
            list.clone(),
            Pick::InOrder,
            move |copy: u16, _cx| {
                let (up, made) = (up.clone(), made.clone());
                async move {
                    if !up.lock().unwrap().contains(&copy) {
                        return Err(format!("{copy} refused"));
                    }
                    let c = WithCloseSignal::new(copy, CloseSignal::new());
                    made.lock().unwrap().push(c.clone());
                    Ok(c)
                }
            },
        )
        .retry_policy(persistent_connection::RetryPolicy::constant(delay).non_random())
        .handover_grace(Duration::from_secs(5))
        .seed(1)
        .on_event(move |e| {
            let log = log.clone();
            async move {
                let text = match &e {
                    Event::Connected(c) => format!("Connected({})", c.get()),
                    Event::HandedOver { connection, reason } => {
                        format!("HandedOver({}, {})", connection.get(), reason.as_str())
                    }
                    Event::ObtainedAddress(a) => format!("ObtainedAddress({a})"),
                    other => format!("{:?}", other.kind()),
                };
                let t = start.elapsed().as_millis() as u64;
                log.lock().unwrap().push((t, text));
            }
        })
    }
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

async fn current_copy(pc: &Pc) -> Option<u16> {
    pc.current_connection().map(|c| *c.get())
}

#[tokio::test(start_paused = true)]
async fn r15_a_user_handover_replaces_the_connection_without_a_disconnection() {
    let w = World::new([1, 2]);
    let list = StaticList::new([1u16, 2]);
    let pc = w.follow(&list, Duration::from_secs(1)).unfollow().build();
    assert_eq!(*pc.connected().await.get(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;

    pc.handover(HandoverReason::User);
    settle().await;
    assert_eq!(current_copy(&pc).await, Some(2));
    let old = w.made_to(1).pop().unwrap();
    assert!(
        !old.is_closed(),
        "the old connection serves through its grace"
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(old.is_closed(), "closed once its grace ended");
    assert_eq!(
        w.events(),
        [
            "AttemptingToConnect",
            "ObtainedAddress(1)",
            "Connected(1)",
            "HandedOver(2, user)"
        ]
    );
    let stats = pc.stats();
    assert_eq!((stats.handovers, stats.disconnections), (1, 0));
    pc.close().await;
}

#[tokio::test(start_paused = true)]
async fn r15_a_copy_withdrawn_from_the_catalog_is_left_make_before_break() {
    let w = World::new([1, 2]);
    let list = StaticList::new([1u16, 2]);
    let pc = w.follow(&list, Duration::from_secs(1)).build();
    assert_eq!(*pc.connected().await.get(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Watch that no instant passes without a current connection.
    let watcher = {
        let pc = pc.clone();
        tokio::spawn(async move {
            let mut gaps = 0;
            for _ in 0..2_000 {
                if pc.current_connection().is_none() {
                    gaps += 1;
                }
                tokio::task::yield_now().await;
            }
            gaps
        })
    };
    list.replace([2]);
    settle().await;
    assert_eq!(current_copy(&pc).await, Some(2));
    assert_eq!(
        watcher.await.unwrap(),
        0,
        "a current connection at every instant"
    );
    assert!(w.events().contains(&"HandedOver(2, withdrawn)".to_owned()));
    assert!(!w.events().contains(&"Disconnected".to_owned()));
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(w.made_to(1)[0].is_closed());
    pc.close().await;
}

#[tokio::test(start_paused = true)]
async fn r15_a_preferred_copy_listed_again_is_failed_back_to() {
    let w = World::new([1, 2]);
    let list = StaticList::new([1u16, 2]);
    let pc = w.follow(&list, Duration::from_secs(1)).build();
    assert_eq!(*pc.connected().await.get(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    list.replace([2]); // 1 goes away for a deploy
    settle().await;
    assert_eq!(current_copy(&pc).await, Some(2));
    tokio::time::sleep(Duration::from_secs(3)).await;
    list.replace([1, 2]); // 1 is back, first in order
    settle().await;
    assert_eq!(current_copy(&pc).await, Some(1));
    assert!(w.events().contains(&"HandedOver(1, fail_back)".to_owned()));
    assert_eq!(pc.stats().disconnections, 0);
    pc.close().await;
}

#[tokio::test(start_paused = true)]
async fn r15_a_failed_handover_leaves_the_current_connection_serving() {
    let w = World::new([1]);
    let list = StaticList::new([1u16, 2]);
    let pc = w.follow(&list, Duration::from_secs(1)).unfollow().build();
    assert_eq!(*pc.connected().await.get(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    pc.handover(HandoverReason::User); // 2 refuses
    settle().await;
    assert_eq!(current_copy(&pc).await, Some(1));
    assert!(pc.stats().handover_failures >= 1);
    // It is retried on the retry policy while its cause holds; 2 comes up.
    w.set_up([1, 2]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(current_copy(&pc).await, Some(2));
    assert_eq!(pc.stats().handovers, 1);
    pc.cancel_handover(); // nothing pending: nothing happens
    pc.close().await;
}

#[tokio::test(start_paused = true)]
async fn r15_max_connection_age_replaces_old_connections() {
    let w = World::new([1, 2]);
    let list = StaticList::new([1u16, 2]);
    let pc = w
        .follow(&list, Duration::from_secs(1))
        .unfollow()
        .max_connection_age(Duration::from_secs(30))
        .build();
    assert_eq!(*pc.connected().await.get(), 1);
    tokio::time::sleep(Duration::from_secs(23)).await;
    assert_eq!(pc.stats().handovers, 0, "not before 0.8 × the age");
    tokio::time::sleep(Duration::from_secs(14)).await;
    assert_eq!(pc.stats().handovers, 1, "by 1.2 × the age");
    assert!(w.events().contains(&"HandedOver(2, max_age)".to_owned()));
    pc.close().await;
}

#[tokio::test(start_paused = true)]
async fn r16_retry_now_ends_a_long_wait_and_is_bounded() {
    let w = World::new([]);
    let list = StaticList::new([1u16]);
    let pc = w.follow(&list, Duration::from_secs(10)).unfollow().build();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pc.stats().attempts, 1);
    w.set_up([1]);
    pc.retry_now();
    settle().await;
    assert_eq!(pc.stats().attempts, 2, "the wait ended at once");
    assert_eq!(current_copy(&pc).await, Some(1));
    assert_eq!(pc.stats().retries_now, 1);
    pc.close().await;

    // Bounded (I10): after an attempt that began by retry now, the next wait runs out.
    let w = World::new([]);
    let pc = w.follow(&list, Duration::from_secs(10)).unfollow().build();
    tokio::time::sleep(Duration::from_secs(1)).await;
    pc.retry_now();
    settle().await;
    assert_eq!(pc.stats().attempts, 2);
    pc.retry_now();
    settle().await;
    assert_eq!(
        pc.stats().attempts,
        2,
        "refused: the wait after it runs its course"
    );
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(pc.stats().attempts, 3);
    pc.close().await;
}

#[tokio::test(start_paused = true)]
async fn r16_a_newly_listed_copy_ends_the_wait() {
    let w = World::new([2]);
    let list = StaticList::new([1u16]);
    let pc = w.follow(&list, Duration::from_secs(10)).build();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pc.stats().attempts, 1, "1 refused; waiting 10 s");
    list.replace([1, 2]);
    settle().await;
    assert_eq!(
        current_copy(&pc).await,
        Some(2),
        "served without waiting out the delay"
    );
    assert!(w.at("Connected(2)").unwrap() < 1_100);
    pc.close().await;
}

#[tokio::test(start_paused = true)]
async fn r17_a_young_connection_lost_is_replaced_from_another_copy_at_once() {
    let w = World::new([1, 2]);
    let list = StaticList::new([1u16, 2]);
    let pc = w.follow(&list, Duration::from_secs(10)).build();
    assert_eq!(*pc.connected().await.get(), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    w.set_up([2]);
    let died = Instant::now();
    w.made_to(1)[0].signal().begin_close();
    w.made_to(1)[0].signal().mark_closed();
    let c = pc.connected().await;
    assert_eq!(*c.get(), 2);
    assert!(died.elapsed() < Duration::from_millis(100), "not R6's 9 s");
    pc.close().await;

    // One copy listed: R6 waits as in the original.
    let w = World::new([1]);
    let single = StaticList::new([1u16]);
    let pc = w.follow(&single, Duration::from_secs(10)).build();
    pc.connected().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let died = Instant::now();
    w.made_to(1)[0].signal().begin_close();
    w.made_to(1)[0].signal().mark_closed();
    settle().await;
    pc.connected().await;
    assert!(
        died.elapsed() >= Duration::from_secs(8),
        "R6: the rest of the 10 s delay"
    );
    pc.close().await;
}

#[tokio::test(start_paused = true)]
async fn close_during_a_handover_closes_both_and_finishes() {
    let w = World::new([1]);
    let list = StaticList::new([1u16, 2]);
    let pc = w.follow(&list, Duration::from_secs(1)).unfollow().build();
    pc.connected().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.set_up([1, 2]);
    pc.handover(HandoverReason::User);
    settle().await;
    assert_eq!(current_copy(&pc).await, Some(2));
    pc.close().await; // the retired one too, without waiting out its grace
    assert!(w.made.lock().unwrap().iter().all(|c| c.is_closed()));
}

#[tokio::test(start_paused = true)]
async fn r15_a_server_that_says_it_drains_is_handed_over_from() {
    let w = World::new([1, 2]);
    let list = StaticList::new([1u16, 2]);
    // The server's drain notice (a GOAWAY, say), per copy.
    let (notice, _) = tokio::sync::broadcast::channel::<u16>(4);
    let rx_source = notice.clone();
    let pc = w
        .follow(&list, Duration::from_secs(1))
        .unfollow()
        .handover_on(move |c: &Conn| {
            let copy = *c.get();
            let mut rx = rx_source.subscribe();
            async move { while rx.recv().await.is_ok_and(|n| n != copy) {} }
        })
        .build();
    assert_eq!(*pc.connected().await.get(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    notice.send(1).unwrap();
    settle().await;
    assert_eq!(current_copy(&pc).await, Some(2));
    assert!(w.events().contains(&"HandedOver(2, drain)".to_owned()));
    assert!(
        !w.made_to(1)[0].is_closed(),
        "calls in flight finish during the grace"
    );
    assert_eq!(pc.stats().disconnections, 0);
    pc.close().await;
}
