//! Failures that name their persistent connection (issue 28 item 10): the builder's lookup
//! timeout, and a panic in the drop of user code, logged by the crate's guard. On the
//! paused clock.

use std::time::Duration;

use persistent_connection::conn::CloseSignal;
use persistent_connection::{AttemptError, Error, PersistentConnection};

/// A `get_address` that hangs fails the attempt with `Error::LookupTimedOut`, which says
/// whose lookup timed out and after how long.
#[tokio::test(start_paused = true)]
async fn a_lookup_timeout_names_the_server() {
    let pc = PersistentConnection::builder(
        "inventory",
        std::future::pending::<Result<u16, String>>,
        |_port: u16, _cx| async { Ok::<_, String>(CloseSignal::new()) },
    )
    .lookup_timeout(Duration::from_millis(250))
    .build();
    let err = match pc.connected_or_failed_to_connect().await {
        Err(AttemptError::Failed(e)) => e,
        other => panic!("expected a failed attempt, got {other:?}"),
    };
    assert_eq!(
        err,
        Error::LookupTimedOut {
            server: "inventory".into(),
            after: Duration::from_millis(250)
        }
    );
    assert_eq!(
        err.to_string(),
        "address lookup for inventory timed out after 250ms"
    );
    pc.close().await;
}

/// Keeps the text (fields and message) of every warn-level `tracing` event.
#[derive(Clone, Default)]
struct Warnings(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

struct Text(String);

impl tracing::field::Visit for Text {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }
}

impl tracing::Subscriber for Warnings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            let mut text = Text(String::new());
            event.record(&mut text);
            self.0.lock().unwrap().push(text.0);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// User code whose drop panics.
struct PanicsOnDrop;

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("boom in drop");
    }
}

/// A `connect` future that gives its connection at once and panics when dropped (not
/// while polled: an `async` block would drop its locals in its last poll).
struct ReadyThenPanicsOnDrop(Option<CloseSignal>, #[allow(dead_code)] PanicsOnDrop);

impl std::future::Future for ReadyThenPanicsOnDrop {
    type Output = Result<CloseSignal, String>;
    fn poll(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let conn = self.get_mut().0.take().expect("polled after it finished");
        std::task::Poll::Ready(Ok(conn))
    }
}

/// A `connect` future whose drop panics, once it has given its connection: the guard logs
/// the panic (there is no caller left to tell), naming the task and the server.
#[tokio::test(start_paused = true)]
async fn a_panic_in_the_drop_of_user_code_is_logged_with_the_server() {
    let warnings = Warnings::default();
    let _default = tracing::subscriber::set_default(warnings.clone());
    let pc = PersistentConnection::builder(
        "inventory",
        || async { Ok::<_, String>(1u16) },
        |_port: u16, _cx| ReadyThenPanicsOnDrop(Some(CloseSignal::new()), PanicsOnDrop),
    )
    .build();
    tokio::time::timeout(Duration::from_secs(60), pc.connected())
        .await
        .expect("connected: a drop that panics after the output keeps the connection");
    pc.close().await;
    let warnings = warnings.0.lock().unwrap().clone();
    let line = warnings
        .iter()
        .find(|w| w.contains("dropping connect panicked"))
        .unwrap_or_else(|| panic!("no drop-panic line in {warnings:#?}"));
    assert!(line.contains(r#"what="connect""#), "{line}");
    assert!(line.contains(" server=inventory"), "{line}");
}

/// The same when the runtime shuts down under a pending `connect` whose drop panics: the
/// driver task is dropped outside any poll, and the line still names the server.
#[test]
fn a_panic_in_a_drop_at_runtime_shutdown_is_logged_with_the_server() {
    let warnings = Warnings::default();
    let _default = tracing::subscriber::set_default(warnings.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let pc = runtime.block_on(async {
        let pc = PersistentConnection::builder(
            "inventory",
            || async { Ok::<_, String>(1u16) },
            |_port: u16, _cx| {
                let bomb = PanicsOnDrop;
                async move {
                    let _bomb = &bomb;
                    std::future::pending::<Result<CloseSignal, String>>().await
                }
            },
        )
        .build();
        // The connect is pending once the virtual clock has moved.
        tokio::time::sleep(Duration::from_secs(1)).await;
        pc
    });
    drop(runtime);
    drop(pc);
    let warnings = warnings.0.lock().unwrap().clone();
    let line = warnings
        .iter()
        .find(|w| w.contains("dropping connect panicked"))
        .unwrap_or_else(|| panic!("no drop-panic line in {warnings:#?}"));
    assert!(line.contains(" server=inventory"), "{line}");
}
