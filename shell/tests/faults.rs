//! Faults and bad input on real sockets (issue 7): the persistent connection against
//! servers that die, reset, hang or refuse, and user callbacks that panic or dawdle.
//! Every test checks the rules of SPEC (R1–R14) and, afterwards, that nothing leaked:
//! no file descriptor, no task, and every connection closed exactly once.

mod common;

use std::time::Duration;

use common::child::{ChildServer, Mode, child_main};
use common::conn::{Connector, Fail, Handshake};
use common::leaks::{Clock, run};
use common::servers::{Behaviour, FullBacklog, ThreadServer, refused_addr};

/// Not a test: the body of the child server process (see `common::child`). Returns at once
/// in an ordinary run.
#[test]
fn child_server_entry() {
    child_main();
}

const GUARD: Duration = Duration::from_secs(10);

// ---- the support itself: if these fail, the fault tests below mean nothing ----

#[test]
fn support_child_server_can_be_killed_and_restarted_on_its_port() {
    run(Clock::Real, || async {
        let connector = Connector::new(Handshake::Hello, GUARD);
        let mut server = ChildServer::start(Mode::Greet);
        let addr = server.addr();
        let conn = connector.connect(addr).await.expect("greeted");
        server.kill9();
        // The kernel closes the dead server's socket: our watcher sees it.
        tokio::time::timeout(GUARD, conn.close_finished())
            .await
            .expect("peer close seen");
        assert!(conn.is_closed());
        assert_eq!(
            connector.connect(addr).await.unwrap_err(),
            Fail::Io(std::io::ErrorKind::ConnectionRefused)
        );
        server.restart(Mode::Greet);
        assert_eq!(server.addr(), addr);
        let again = connector
            .connect(addr)
            .await
            .expect("greeted after restart");
        again.close().await;
        server.kill9();
        server.restart(Mode::Reject);
        assert_eq!(
            connector.connect(addr).await.unwrap_err(),
            Fail::Rejected("NO".into())
        );
        drop(server);
        drop((conn, again));
        let records = connector.ledger.records();
        assert_eq!(records.len(), 2);
        assert!(records[0].peer_closed && records[0].close_calls == 0);
        assert!(!records[1].peer_closed && records[1].close_calls == 1);
        connector.ledger.assert_all_closed_exactly_once();
    });
}

#[test]
fn support_misbehaving_servers_behave_as_advertised() {
    run(Clock::Real, || async {
        let connector = Connector::new(Handshake::Hello, Duration::from_millis(300));
        let closer = ThreadServer::start(Behaviour::AcceptAndClose);
        assert_eq!(
            connector.connect(closer.addr()).await.unwrap_err(),
            Fail::Eof
        );
        let resetter = ThreadServer::start(Behaviour::Reset);
        assert_eq!(
            connector.connect(resetter.addr()).await.unwrap_err(),
            Fail::Io(std::io::ErrorKind::ConnectionReset)
        );
        let full = FullBacklog::start();
        assert!(full.fillers() >= 1);
        assert_eq!(
            connector.connect(full.addr()).await.unwrap_err(),
            Fail::Timeout
        );
        assert_eq!(
            connector.connect(refused_addr()).await.unwrap_err(),
            Fail::Io(std::io::ErrorKind::ConnectionRefused)
        );
        // Without a handshake, the accept-and-close server's connections succeed and then
        // die at once.
        let plain = Connector::new(Handshake::None, GUARD);
        let conn = plain.connect(closer.addr()).await.expect("tcp connect");
        tokio::time::timeout(GUARD, conn.close_finished())
            .await
            .expect("peer close seen");
        drop(conn);
        assert!(plain.ledger.records()[0].peer_closed);
        drop((closer, resetter, full));
        plain.ledger.assert_all_closed_exactly_once();
        assert_eq!(connector.ledger.made(), 0);
    });
}
