//! What `close()`, R11 and `TcpConnection::connect` promise in the blocking driver, against
//! a server in this process on 127.0.0.1 (issue 28 item 12). Real time (the driver has no
//! virtual clock): every wait is bounded and generous, and no test sleeps for a fixed time.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use persistent_connection_blocking::{
    Config, Event, PersistentConnection, RetryPolicy, TcpConnection,
};

const WAIT: Duration = Duration::from_secs(20);

type Ev = Event<SocketAddr, TcpConnection, std::io::ErrorKind>;
type Pc = PersistentConnection<SocketAddr, TcpConnection, std::io::ErrorKind>;

/// A server that accepts every connection and holds it until `drop_all` is called.
struct Server {
    addr: SocketAddr,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let keep = held.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                keep.lock().unwrap().push(stream);
            }
        });
        Server { addr, held }
    }

    /// Closes every connection accepted so far.
    fn drop_all(&self) {
        for s in self.held.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn name(event: &Ev) -> String {
    match event {
        Event::AttemptingToConnect => "AttemptingToConnect".into(),
        Event::ObtainedAddress(_) => "ObtainedAddress".into(),
        Event::Connected(_) => "Connected".into(),
        Event::FailedToConnect(_) => "FailedToConnect".into(),
        Event::Disconnected => "Disconnected".into(),
    }
}

/// A persistent connection to `addr`; `on_event` gets every event's name.
fn spawn(addr: SocketAddr, on_event: impl FnMut(Ev) + Send + 'static) -> Pc {
    PersistentConnection::spawn(
        Config {
            seed: 1,
            retry: RetryPolicy::constant(Duration::from_millis(10)),
        },
        move || Ok::<_, std::io::ErrorKind>(addr),
        |addr| TcpConnection::connect(addr, Duration::from_secs(5)).map_err(|e| e.kind()),
        on_event,
    )
}

/// Issue 28 item 12: R11 while connected counts as closed as soon as it returns, as in the
/// Tokio shell (docs/behaviour.md R11, S2, §7); the connection stays up and current until
/// the server closes it, and no round follows.
#[test]
fn r11_when_connected_counts_as_closed_at_once_while_the_connection_stays_up() {
    let server = Server::start();
    let (tx, rx) = mpsc::channel();
    let pc = spawn(server.addr, move |event| {
        let _ = tx.send(name(&event));
    });
    let conn = pc.connected_timeout(WAIT).expect("connected");
    pc.close_when_current_connection_is_closed();
    assert!(pc.is_closed(), "closed as soon as R11 returns");
    assert_eq!(pc.current_connection(), Some(conn.clone()), "still current");
    assert!(!conn.is_closed(), "the connection stays up");
    server.drop_all();
    let mut events = Vec::new();
    while events.last().map(String::as_str) != Some("Disconnected") {
        events.push(rx.recv_timeout(WAIT).expect("events up to Disconnected"));
    }
    pc.close();
    assert!(conn.is_closed());
    assert_eq!(pc.current_connection(), None);
    events.extend(rx.try_iter());
    assert_eq!(
        events,
        [
            "AttemptingToConnect",
            "ObtainedAddress",
            "Connected",
            "Disconnected"
        ],
        "no round after R11"
    );
}
