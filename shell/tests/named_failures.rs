//! Failures that name their persistent connection (issue 28 item 10): the builder's lookup
//! timeout, and a panic in the drop of user code, logged by the crate's guard. On the
//! paused clock.

use std::time::Duration;

use persistent_connection::{AttemptError, CloseSignal, Error, PersistentConnection};

/// A `get_address` that hangs fails the attempt with `Error::LookupTimedOut`, which says
/// whose lookup timed out and after how long.
#[tokio::test(start_paused = true)]
async fn a_lookup_timeout_names_the_server() {
    let pc = PersistentConnection::builder(
        "inventory",
        || std::future::pending::<Result<u16, String>>(),
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
