//! Leak checks: open file descriptors (`/proc/self/fd`) and live Tokio tasks.
//!
//! File descriptors belong to the whole process, so tests that count them must not run
//! alongside each other: [`run`] takes a process-wide lock, builds the test's own runtime
//! (after the lock, so that no other test's runtime opens descriptors meanwhile), records
//! the descriptor count, runs the test, and checks that the count and the runtime's live
//! task count are back to where they were.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

static SERIAL: Mutex<()> = Mutex::new(());

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    // The directory handle itself is one of the entries; it is there in every count.
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd (Linux)")
        .count()
}

/// The open file descriptors with what they point to, for a failure message.
pub fn describe_fds() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some(format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                target.display()
            ))
        })
        .collect();
    v.sort();
    v
}

/// Tasks alive on the current runtime.
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Which clock a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// Real time: for real sockets.
    Real,
    /// Tokio's paused clock: time jumps when every task is idle.
    Paused,
    /// Real time on a multi-thread runtime with two workers: tasks run in parallel.
    MultiThread,
}

/// Run one test body on a fresh current-thread runtime, alone in the process, and check
/// afterwards that no descriptor and no task is left over. The body must leave the
/// process as it found it: servers stopped, persistent connections closed, handles
/// dropped.
pub fn run<F, Fut>(clock: Clock, body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // The test runs on its own thread so that a runtime that stops making progress (a task
    // that never yields) is reported instead of hanging the suite.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let test = std::thread::spawn(move || {
        let _done = DropSignal(done_tx);
        run_here(clock, body);
    });
    match done_rx.recv_timeout(TEST_GUARD) {
        Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = test.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            // Its runtime is wedged; nothing sound can run in this process after it.
            // Straight to the process's stderr: the test harness captures `eprintln!`.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "a fault test made no progress for {TEST_GUARD:?}: its runtime is wedged \
                 (a task that never yields?); aborting the test process"
            );
            std::process::exit(101);
        }
    }
}

/// The wall-clock guard on one whole test (a hang guard, not a timed assertion).
pub const TEST_GUARD: Duration = Duration::from_secs(40);

struct DropSignal(std::sync::mpsc::Sender<()>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

fn run_here<F, Fut>(clock: Clock, body: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let rt = match clock {
        Clock::MultiThread => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(clock == Clock::Paused)
            .build(),
    }
    .expect("runtime");
    let fds_before = open_fds();
    let described_before = describe_fds();
    rt.block_on(async {
        assert_eq!(alive_tasks(), 0);
        body().await;
        // Nothing of the library (nor of the test's connections) may still run. Tasks end
        // asynchronously after the close they report, so wait for that, bounded.
        let guard = Duration::from_secs(10);
        assert!(
            settle(guard, || alive_tasks() == 0).await,
            "tasks left alive: {}",
            alive_tasks()
        );
        if !settle(guard, || open_fds() == fds_before).await {
            panic!(
                "descriptors leaked:\nbefore: {described_before:#?}\nafter: {:#?}",
                describe_fds()
            );
        }
    });
    drop(rt);
}

/// Wait until `cond` holds, checking after every pass of the scheduler and then every
/// millisecond, for at most `guard` (a hang guard, never a way to let time pass). Returns
/// whether it held.
pub async fn settle(guard: Duration, mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..64 {
        if cond() {
            return true;
        }
        tokio::task::yield_now().await;
    }
    let deadline = tokio::time::Instant::now() + guard;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    cond()
}
