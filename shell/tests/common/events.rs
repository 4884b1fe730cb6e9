//! Building persistent connections over the test support, recording their events, and
//! checking the event grammar (I1) and de-duplication (I2) of docs/behaviour.md §5.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use persistent_connection::{Builder, Error, Event, PersistentConnection};
use tokio::sync::Notify;

use super::conn::{Catalog, Conn, Connector, Fail};

/// The persistent connection under test.
pub type Pc = PersistentConnection<SocketAddr, Conn, Fail>;
/// Its events.
pub type Ev = Event<SocketAddr, Conn, Fail>;

/// A builder over `catalog` and `connector`, with non-random jitter and a fixed seed.
pub fn builder(catalog: &Catalog, connector: &Connector) -> Builder<SocketAddr, Conn, Fail> {
    let catalog = catalog.clone();
    let connector = connector.clone();
    PersistentConnection::builder(
        "faults",
        move || {
            let catalog = catalog.clone();
            async move { catalog.lookup().await }
        },
        move |addr: SocketAddr, _cx| {
            let connector = connector.clone();
            async move { connector.connect(addr).await }
        },
    )
    .retry_policy(
        persistent_connection::RetryPolicy::constant(Duration::from_secs(10)).non_random(),
    )
    .seed(7)
}

/// A compact text for an event: `AttemptingToConnect`, `ObtainedAddress`,
/// `FailedToConnect(<error>)`, `Connected(#<ledger id>)`, `Disconnected`.
pub fn describe(ev: &Ev) -> String {
    match ev {
        Event::AttemptingToConnect => "AttemptingToConnect".into(),
        Event::ObtainedAddress(_) => "ObtainedAddress".into(),
        Event::FailedToConnect(e) => format!("FailedToConnect({})", describe_error(e)),
        Event::Connected(c) => format!("Connected(#{})", c.id()),
        Event::Disconnected => "Disconnected".into(),
        Event::HandedOver { connection, reason } => {
            format!("HandedOver(#{}, {})", connection.id(), reason.as_str())
        }
    }
}

/// A compact text for a failure.
pub fn describe_error(e: &Error<Fail>) -> String {
    match e {
        Error::User(f) => format!("{f:?}"),
        Error::Panicked { callback, .. } => format!("Panicked({callback})"),
        Error::TimedOut(d) => format!("TimedOut({d:?})"),
        Error::LookupTimedOut { after, .. } => format!("LookupTimedOut({after:?})"),
    }
}

/// A log of what `on_event` saw, in order, plus markers (starting with `~`) that tests add
/// from inside their handlers. Tests await entries with a hang guard.
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    log: Arc<Mutex<Vec<String>>>,
    changed: Arc<Notify>,
}

impl Recorder {
    /// A new, empty log.
    pub fn new() -> Recorder {
        Recorder::default()
    }

    /// Append an entry.
    pub fn push(&self, entry: impl Into<String>) {
        self.log.lock().unwrap().push(entry.into());
        self.changed.notify_waiters();
    }

    /// The whole log.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The events only (markers left out).
    pub fn events(&self) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|e| !e.starts_with('~'))
            .collect()
    }

    /// How many entries equal `entry`.
    pub fn count(&self, entry: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|e| *e == entry)
            .count()
    }

    /// Wait (bounded by `guard`) until the log holds at least `n` entries equal to `entry`.
    pub async fn wait_count(&self, entry: &str, n: usize, guard: Duration) {
        self.wait_until(&format!("{n} × {entry}"), guard, |log| {
            log.iter().filter(|e| *e == entry).count() >= n
        })
        .await
    }

    /// Wait (bounded by `guard`) until an entry starting with `prefix` appears; returns it.
    pub async fn wait_prefix(&self, prefix: &str, guard: Duration) -> String {
        self.wait_until(prefix, guard, |log| {
            log.iter().any(|e| e.starts_with(prefix))
        })
        .await;
        self.log()
            .into_iter()
            .find(|e| e.starts_with(prefix))
            .expect("just seen")
    }

    /// Wait (bounded by `guard`) until `cond` holds of the log.
    pub async fn wait_until(&self, what: &str, guard: Duration, cond: impl Fn(&[String]) -> bool) {
        let wait = async {
            loop {
                let notified = self.changed.notified();
                if cond(&self.log.lock().unwrap()) {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(guard, wait).await.is_err() {
            panic!(
                "hang guard ({guard:?}) passed waiting for: {what}; log: {:?}",
                self.log()
            );
        }
    }

    /// A handler for `on_event` that records each event and nothing else.
    pub fn handler(&self) -> impl Fn(Ev) -> std::future::Ready<()> + Send + Sync + 'static {
        let rec = self.clone();
        move |ev| {
            rec.push(describe(&ev));
            std::future::ready(())
        }
    }

    /// Checks the events against I1 (grammar, at most one `Connected` per round) and I2
    /// (de-duplication of consecutive failures within a round; addresses are all the same
    /// in these tests, so at most one `ObtainedAddress` per round).
    pub fn assert_grammar(&self) {
        assert_grammar(&self.events());
    }
}

/// I1 and I2 over a list of described events (see [`describe`]).
pub fn assert_grammar(events: &[String]) {
    #[derive(PartialEq, Debug)]
    enum St {
        Start,
        InRound,
        Connected,
        Disconnected,
    }
    let mut st = St::Start;
    let mut last_failure: Option<&str> = None;
    let mut obtained = 0;
    for (i, e) in events.iter().enumerate() {
        let bad = || panic!("I1: event {i} ({e}) out of order in {events:?}");
        if e == "AttemptingToConnect" {
            if !(st == St::Start || st == St::Disconnected) {
                bad();
            }
            st = St::InRound;
            last_failure = None;
            obtained = 0;
        } else if e == "ObtainedAddress" {
            if st != St::InRound {
                bad();
            }
            obtained += 1;
            assert!(
                obtained <= 1,
                "I2: the same address obtained twice in a round: {events:?}"
            );
        } else if e.starts_with("FailedToConnect(") {
            if st != St::InRound {
                bad();
            }
            assert_ne!(
                last_failure,
                Some(e.as_str()),
                "I2: a failure repeated within a round at {i}: {events:?}"
            );
            last_failure = Some(e.as_str());
        } else if e.starts_with("Connected(") {
            if st != St::InRound {
                bad();
            }
            st = St::Connected;
        } else if e == "Disconnected" {
            if st != St::Connected {
                bad();
            }
            st = St::Disconnected;
        } else {
            panic!("unknown event {e}");
        }
    }
}
