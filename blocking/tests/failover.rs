//! The blocking driver against real echo servers on 127.0.0.1, each in a child process
//! that the test kills with SIGKILL and restarts: it fails over, retries, de-duplicates
//! failures, and closes. Real time (the driver has no virtual clock): every wait is
//! bounded and generous, and no test sleeps for a fixed time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use persistent_connection_blocking::{
    Config, Error, Event, PersistentConnection, RetryPolicy, TcpConnection,
};

const CHILD_ENV: &str = "PC_BLOCKING_CHILD_PORT";
const WAIT: Duration = Duration::from_secs(20);

/// The child process's body: an echo server on the port in `CHILD_ENV`, until its stdin
/// closes. In an ordinary run the variable is unset and this test does nothing.
#[test]
fn child_server_entry() {
    let Ok(port) = std::env::var(CHILD_ENV) else {
        return;
    };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port.parse().unwrap())).unwrap();
    println!("READY {}", listener.local_addr().unwrap().port());
    std::io::stdout().flush().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    std::process::exit(0);
}

/// An echo server in a child process (this test binary, re-executed). Dropping it kills it.
struct Server {
    child: Option<(Child, ChildStdin)>,
    port: u16,
}

impl Server {
    fn start(port: u16) -> Server {
        let exe = std::env::current_exe().unwrap();
        // A restart may race the kernel's release of the port: retry, bounded.
        for _ in 0..100 {
            let mut child = Command::new(&exe)
                .args(["child_server_entry", "--exact", "--nocapture"])
                .env(CHILD_ENV, port.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let stdin = child.stdin.take().unwrap();
            let stdout = BufReader::new(child.stdout.take().unwrap());
            let ready = stdout.lines().find_map(|line| {
                let line = line.ok()?;
                line.split_once("READY ")?.1.trim().parse::<u16>().ok()
            });
            if let Some(port) = ready {
                return Server {
                    child: Some((child, stdin)),
                    port,
                };
            }
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no echo server on port {port}");
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    fn kill(&mut self) {
        let (mut child, _stdin) = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn restart(&mut self) {
        *self = Server::start(self.port);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill();
        }
    }
}

type Ev = Event<SocketAddr, TcpConnection, std::io::ErrorKind>;

/// What the tests compare: events with the connection named by its peer.
fn show(event: &Ev) -> String {
    match event {
        Event::Connected(c) => format!("Connected({})", c.peer_addr().port()),
        Event::ObtainedAddress(a) => format!("ObtainedAddress({})", a.port()),
        other => format!("{other:?}"),
    }
}

/// Receives events until `last`, returning them all.
fn events_until(rx: &mpsc::Receiver<String>, last: &str) -> Vec<String> {
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some(last) {
        match rx.recv_timeout(WAIT) {
            Ok(e) => seen.push(e),
            Err(e) => panic!("no {last} within {WAIT:?} ({e}); saw {seen:?}"),
        }
    }
    seen
}

fn echo(conn: &TcpConnection, text: &str) {
    conn.send(text.as_bytes()).unwrap();
    let mut got = Vec::new();
    while got.len() < text.len() {
        got.extend(conn.recv_timeout(WAIT).expect("an echo"));
    }
    assert_eq!(got, text.as_bytes());
}

#[test]
fn kill_one_it_fails_over_retries_and_close_finishes() {
    let mut a = Server::start(0);
    let mut b = Server::start(0);
    let (pa, pb) = (a.port, b.port);
    // The catalog lists both servers; each lookup gives the next one, A first.
    let catalog = [a.addr(), b.addr()];
    let lookups = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel();
    let pc = PersistentConnection::spawn(
        Config {
            seed: 7,
            retry: RetryPolicy::constant(Duration::from_millis(100)),
        },
        move || Ok(catalog[lookups.fetch_add(1, Ordering::SeqCst) % 2]),
        |addr| TcpConnection::connect(addr, Duration::from_secs(5)).map_err(|e| e.kind()),
        move |event: Ev| {
            let _ = tx.send(show(&event));
        },
    );

    let first = pc.connected_timeout(WAIT).expect("connected to A");
    assert_eq!(first.peer_addr(), a.addr());
    echo(&first, "to A\n");
    let connected_a = format!("Connected({pa})");
    assert_eq!(
        events_until(&rx, &connected_a),
        [
            "AttemptingToConnect".to_string(),
            format!("ObtainedAddress({pa})"),
            connected_a.clone()
        ]
    );

    // A dies: its connection notices, and the next lookup names B (R6, R3, R5).
    a.kill();
    let connected_b = format!("Connected({pb})");
    assert_eq!(
        events_until(&rx, &connected_b),
        [
            "Disconnected".to_string(),
            "AttemptingToConnect".to_string(),
            format!("ObtainedAddress({pb})"),
            connected_b.clone()
        ]
    );
    assert!(first.is_closed());
    let second = pc.current_connection().expect("B is current");
    assert_eq!(second.peer_addr(), b.addr());
    echo(&second, "to B\n");

    // B dies too: attempts alternate between two refusing servers. The refusal is
    // reported once (R4 de-duplication) until A is back; then it connects to A.
    b.kill();
    let failed = "FailedToConnect(User(ConnectionRefused))";
    let outage = events_until(&rx, failed);
    assert_eq!(
        outage,
        [
            "Disconnected".to_string(),
            "AttemptingToConnect".to_string(),
            format!("ObtainedAddress({pa})"),
            failed.to_string()
        ]
    );
    a.restart();
    let recovery = events_until(&rx, &connected_a);
    assert!(
        recovery
            .iter()
            .all(|e| e.starts_with("ObtainedAddress") || *e == connected_a),
        "only address changes until A is back, no repeated failure: {recovery:?}"
    );
    let third = pc.connected_timeout(WAIT).expect("connected to A again");
    echo(&third, "A again\n");

    // close: the connection is closed, `Disconnected` handled, the driver ends (R8).
    pc.close();
    assert!(pc.is_closed());
    assert!(third.is_closed());
    assert_eq!(pc.current_connection(), None);
    assert_eq!(rx.recv_timeout(WAIT), Ok("Disconnected".to_string()));
    // The driver thread owned `on_event` and its sender: it has ended, nothing follows.
    assert_eq!(
        rx.recv_timeout(WAIT),
        Err(mpsc::RecvTimeoutError::Disconnected)
    );
    assert_eq!(pc.connected_timeout(Duration::ZERO), None);
}

#[test]
fn dropping_the_last_handle_closes_in_the_background() {
    let server = Server::start(0);
    let addr = server.addr();
    let (tx, rx) = mpsc::channel();
    let pc = PersistentConnection::spawn(
        Config::default(),
        move || Ok::<_, std::io::ErrorKind>(addr),
        |addr| TcpConnection::connect(addr, Duration::from_secs(5)).map_err(|e| e.kind()),
        move |event: Ev| {
            let _ = tx.send(show(&event));
        },
    );
    let conn = pc.connected_timeout(WAIT).expect("connected");
    let clone = pc.clone();
    drop(pc);
    assert!(!clone.is_closed(), "a clone keeps it open");
    drop(clone);
    let events: Vec<String> = std::iter::from_fn(|| rx.recv_timeout(WAIT).ok()).collect();
    assert_eq!(
        events.last().map(String::as_str),
        Some("Disconnected"),
        "{events:?}"
    );
    assert!(conn.is_closed(), "R14: the connection was closed");
}

#[test]
fn a_panicking_connect_is_a_failed_attempt_and_the_loop_goes_on() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let keep = accepted.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            keep.lock().unwrap().push(s);
        }
    });
    let calls = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel();
    let pc = PersistentConnection::spawn(
        Config {
            seed: 1,
            retry: RetryPolicy::constant(Duration::from_millis(10)),
        },
        move || Ok::<_, std::io::ErrorKind>(addr),
        move |addr| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("first connect panics");
            }
            TcpConnection::connect(addr, Duration::from_secs(5)).map_err(|e| e.kind())
        },
        move |event: Ev| {
            if let Event::FailedToConnect(e) = &event {
                assert_eq!(*e, Error::Panicked("first connect panics".into()));
            }
            let _ = tx.send(show(&event));
        },
    );
    let events = events_until(&rx, &format!("Connected({})", addr.port()));
    assert_eq!(
        events,
        [
            "AttemptingToConnect".to_string(),
            format!("ObtainedAddress({})", addr.port()),
            "FailedToConnect(Panicked(\"first connect panics\"))".to_string(),
            format!("Connected({})", addr.port()),
        ]
    );
    pc.close();
    assert_eq!(rx.recv_timeout(WAIT), Ok("Disconnected".to_string()));
}

/// R12 as in the original: `connect` calls `abort` and then fails; the loop stops (no new
/// attempt), and the aborting attempt's failure is still reported as `FailedToConnect`
/// before close finishes.
#[test]
fn an_aborting_connects_failure_is_reported_and_no_attempt_follows() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let (tx, rx) = mpsc::channel();
    let (aborted_tx, aborted_rx) = mpsc::channel();
    let pc = PersistentConnection::spawn_with_context(
        Config {
            seed: 1,
            retry: RetryPolicy::constant(Duration::from_millis(10)),
        },
        move || Ok::<_, std::io::ErrorKind>(SocketAddr::from((Ipv4Addr::LOCALHOST, 9))),
        move |_addr, cx| {
            counted.fetch_add(1, Ordering::SeqCst);
            assert_eq!(cx.consecutive_unsuccessful_attempts(), 0);
            cx.abort(std::io::ErrorKind::PermissionDenied);
            let _ = aborted_tx.send(());
            Err::<TcpConnection, _>(std::io::ErrorKind::ConnectionRefused)
        },
        move |event: Ev| {
            let _ = tx.send(show(&event));
        },
    );
    aborted_rx.recv_timeout(WAIT).expect("connect ran");
    assert!(pc.is_closed(), "closed as soon as abort returned");
    let events = events_until(&rx, "FailedToConnect(User(ConnectionRefused))");
    assert_eq!(
        events,
        [
            "AttemptingToConnect".to_string(),
            "ObtainedAddress(9)".to_string(),
            "FailedToConnect(User(ConnectionRefused))".to_string(),
        ]
    );
    pc.close();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no attempt after abort");
    assert!(rx.try_recv().is_err(), "nothing after the failure");
}

/// R13 in the blocking driver's threads: a connection whose `close` or `wait_closed`
/// panics counts as closed; `close()` returns instead of waiting forever for a watcher
/// thread that died.
#[test]
fn a_connection_whose_close_and_wait_closed_panic_does_not_wedge_close() {
    #[derive(Clone)]
    struct Bad(Arc<(Mutex<bool>, std::sync::Condvar)>);
    impl persistent_connection_blocking::Connection for Bad {
        fn close(&self) {
            *self.0.0.lock().unwrap() = true;
            self.0.1.notify_all();
            panic!("close bug");
        }
        fn wait_closed(&self) {
            let mut closed = self.0.0.lock().unwrap();
            while !*closed {
                closed = self.0.1.wait(closed).unwrap();
            }
            drop(closed);
            panic!("wait_closed bug");
        }
    }
    let (tx, rx) = mpsc::channel();
    let pc = PersistentConnection::spawn(
        Config {
            seed: 1,
            retry: RetryPolicy::constant(Duration::from_millis(10)),
        },
        || Ok::<_, ()>(1u8),
        |_addr| Ok(Bad(Arc::default())),
        move |event: Event<u8, Bad, ()>| {
            let _ = tx.send(format!("{:?}", event.kind()));
        },
    );
    assert!(pc.connected_timeout(WAIT).is_some());
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        pc.close();
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(WAIT)
        .expect("close() returned although the connection's close and wait_closed panicked");
    let events: Vec<String> = rx.try_iter().collect();
    assert_eq!(
        events,
        [
            "AttemptingToConnect",
            "ObtainedAddress",
            "Connected",
            "Disconnected"
        ]
    );
}

/// R13: a custom retry delay that panics falls back to the default delay for that attempt,
/// as in the Tokio shell, instead of killing the driver thread.
#[test]
fn a_panicking_retry_delay_does_not_stop_the_driver() {
    #[derive(Clone, Debug)]
    struct Nothing;
    impl persistent_connection_blocking::Connection for Nothing {
        fn close(&self) {}
        fn wait_closed(&self) {}
    }
    let (tx, rx) = mpsc::channel();
    let pc = PersistentConnection::spawn(
        Config {
            seed: 1,
            retry: RetryPolicy {
                delay: persistent_connection_blocking::RetryDelay::from_fn(|_| {
                    panic!("retry_delay bug")
                }),
                jitter: persistent_connection_blocking::Jitter::NonRandom,
            },
        },
        || Err::<u8, _>("down"),
        |_addr| Ok(Nothing),
        move |event: Event<u8, Nothing, &str>| {
            let _ = tx.send(format!("{event:?}"));
        },
    );
    let events = events_until(&rx, "FailedToConnect(User(\"down\"))");
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        !pc.is_closed(),
        "the loop goes on, waiting for the default delay"
    );
    pc.close();
}
