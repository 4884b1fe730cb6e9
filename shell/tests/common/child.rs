//! A real server in a child process that a test can `kill -9` and restart on the same port.
//!
//! The child is this very test binary, re-executed with [`CHILD_ENV`] set and told to run
//! only the entry test (`child_server_entry`, which every test file using this module
//! declares and which calls [`child_main`]). It needs no extra crate and no extra binary.
//!
//! The child speaks a one-line protocol the tests' connect function understands: on
//! accept it writes `HELLO\n` (mode `greet`), nothing at all (mode `silent`: a connect
//! that waits for the greeting hangs there) or `NO\n` and closes (mode `reject`). It then
//! reads until the peer closes. It exits when its stdin reaches end of file, so a test
//! that panics leaves no orphan behind: the pipe closes with the test process.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

/// Set in the child's environment to `<port>:<mode>`.
pub const CHILD_ENV: &str = "PC_FAULTS_CHILD_SERVER";
/// The name of the entry test each test file declares.
pub const ENTRY_TEST: &str = "child_server_entry";

/// What the child server does with each accepted connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Write `HELLO\n`, then read until the peer closes.
    Greet,
    /// Write nothing; read until the peer closes.
    Silent,
    /// Write `NO\n` and close.
    Reject,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Greet => "greet",
            Mode::Silent => "silent",
            Mode::Reject => "reject",
        }
    }

    fn parse(s: &str) -> Mode {
        match s {
            "greet" => Mode::Greet,
            "silent" => Mode::Silent,
            "reject" => Mode::Reject,
            other => panic!("unknown child server mode {other:?}"),
        }
    }
}

/// The body of the child process. Call it from the entry test: it returns at once when
/// [`CHILD_ENV`] is not set (an ordinary test run), and otherwise never returns.
pub fn child_main() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (port, mode) = spec.split_once(':').expect("<port>:<mode>");
    let port: u16 = port.parse().expect("port");
    let mode = Mode::parse(mode);
    // std's `bind` sets SO_REUSEADDR on Unix, so a restart binds the port again although
    // the killed server's connections linger in TIME_WAIT.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("child bind");
    let port = listener.local_addr().expect("local addr").port();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "PC_CHILD_READY {port}").expect("stdout");
        out.flush().expect("flush");
    }
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || serve(stream, mode));
        }
    });
    // Exit when the parent closes our stdin (or dies).
    let mut sink = Vec::new();
    let _ = std::io::stdin().lock().read_to_end(&mut sink);
    std::process::exit(0);
}

fn serve(mut stream: TcpStream, mode: Mode) {
    match mode {
        Mode::Greet => {
            if stream.write_all(b"HELLO\n").is_err() {
                return;
            }
        }
        Mode::Silent => {}
        Mode::Reject => {
            let _ = stream.write_all(b"NO\n");
            return;
        }
    }
    let mut buf = [0u8; 256];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

/// A running child server. Dropping it kills the child.
#[derive(Debug)]
pub struct ChildServer {
    child: Option<(Child, ChildStdin)>,
    port: u16,
    mode: Mode,
}

impl ChildServer {
    /// Start a child server on an ephemeral port of 127.0.0.1.
    pub fn start(mode: Mode) -> ChildServer {
        let mut s = ChildServer {
            child: None,
            port: 0,
            mode,
        };
        s.spawn();
        s
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Whether the child is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|(c, _)| c.id())
    }

    /// `kill -9` the child and reap it. The kernel then closes its sockets: established
    /// connections see FIN (or RST if data was unread) and new connects are refused.
    pub fn kill9(&mut self) {
        if let Some((mut child, stdin)) = self.child.take() {
            child.kill().expect("SIGKILL the child server");
            let status = child.wait().expect("reap the child server");
            drop(stdin);
            assert!(
                !status.success(),
                "the child was killed, not exited: {status:?}"
            );
        }
    }

    /// Start the child again on the same port, possibly in another mode.
    pub fn restart(&mut self, mode: Mode) {
        assert!(self.child.is_none(), "kill the child before restarting it");
        self.mode = mode;
        self.spawn();
    }

    fn spawn(&mut self) {
        let exe = std::env::current_exe().expect("current exe");
        // A restart can race the port's release by the killed child only if the kernel is
        // slow to tear its socket down; a bind failure makes the child exit, so retry a
        // bounded number of times.
        for _ in 0..50 {
            let mut child = Command::new(&exe)
                .args([ENTRY_TEST, "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, format!("{}:{}", self.port, self.mode.as_str()))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn the child server");
            let stdin = child.stdin.take().expect("stdin");
            let stdout = child.stdout.take().expect("stdout");
            // Reads until the readiness line or end of file (the child failed to bind).
            // The test harness prints `test child_server_entry ... ` on the same line.
            let ready = BufReader::new(stdout).lines().find_map(|line| {
                let line = line.ok()?;
                let (_, port) = line.split_once("PC_CHILD_READY ")?;
                port.trim().parse::<u16>().ok()
            });
            match ready {
                Some(port) => {
                    self.port = port;
                    self.child = Some((child, stdin));
                    return;
                }
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        panic!("the child server could not bind 127.0.0.1:{}", self.port);
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if let Some((mut child, _stdin)) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
