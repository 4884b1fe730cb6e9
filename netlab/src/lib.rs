//! A network lab on one Linux machine: hosts in network namespaces of their own, joined by
//! veth pairs to a bridge, with nftables rules as the fault injector between them. Test
//! support for the network drills (issue 19), not a published crate.
//!
//! # Topology
//!
//! ```text
//!   host "client" (netns <prefix>-client)   host "a" (netns <prefix>-a)   …
//!      eth0 10.77.0.1/24                       eth0 10.77.0.2/24
//!        │ veth                                  │ veth
//!   ─────┴───────── br0, in netns <prefix>-bridge ──┴──────────────────────
//!                   table bridge lab: drops (black hole, one-way, partition)
//! ```
//!
//! Every lab has a unique name prefix (`pclab-<pid>-<n>`), so that tests can build labs in
//! parallel; the bridge lives in a namespace of its own and nothing touches the root
//! namespace's network. Each host is a namespace `<prefix>-<name>` with one interface,
//! `eth0`, and the next address of `10.77.0.0/24` (labs are isolated from one another, so
//! they all use the same subnet).
//!
//! # Faults
//!
//! | call | what the hosts see | how |
//! | --- | --- | --- |
//! | [`Lab::blackhole`]`(a, b)` | every packet between `a` and `b` is lost, both ways: SYNs unanswered, sent data never acknowledged, no reset | drop in the bridge's forward chain |
//! | [`Lab::isolate`]`(h)` | the host vanished: a black hole between `h` and every other host | the same |
//! | [`Lab::drop_one_way`]`(from, to)` | packets from `from` to `to` are lost; the other way works | the same, one direction |
//! | [`Lab::partition`]`(side_a, side_b)` | a black hole between every host of one side and every host of the other | the same, for every pair |
//! | [`Lab::reject`]`(a, b)` | TCP segments between `a` and `b` are answered by a reset, other packets (but ICMP) by ICMP port unreachable, both ways (a firewall that rejects) | `reject` in the receiving host's `inet lab` input chain (this kernel's bridge family has no `reject`) |
//! | [`Lab::flap`]`(a, b, period)`, [`Lab::flap_partition`] | a black hole between `a` and `b` (or a partition) for `period`, then none for `period`, and so on | a thread of the lab that adds and removes the rules |
//!
//! Each call returns a [`FaultId`]; [`Lab::lift`] removes that fault and [`Lab::heal`]
//! removes all of them. The rules are replaced in one `nft -f` transaction per namespace,
//! so a change applies at once. There is no delay or loss percentage: `tc netem` is not
//! available on the project's machines.
//!
//! # Running code in a host
//!
//! - [`Host::command`]: a [`Command`] that runs a program in the host (`ip netns exec`).
//! - [`Host::thread`]: a thread that entered the host's namespace (`setns`); sockets it
//!   creates live in the host, also when used from other threads later.
//! - [`Host::runtime`]: a Tokio runtime every thread of which is in the host;
//!   [`HostRuntime::block_on`] runs a future on it (inside the host) and returns its
//!   output, [`HostRuntime::spawn`] starts a task there.
//!
//! # Teardown
//!
//! Dropping the [`Lab`] (also while a test panics) stops the flapping threads, kills every
//! process still in one of its namespaces (the programs the test started there), and
//! deletes every namespace it made; the veth pairs and nft tables go with them. A lab also
//! removes the namespaces of labs whose process is gone (a test killed by a signal), and
//! `scripts/netlab.sh` deletes every `pclab-` namespace when it ends.
//!
//! # Requirements
//!
//! Linux, root, `ip` (iproute2) and `nft` (nftables): `bash scripts/needs.sh` installs
//! them. Without one of them [`Lab::new`] panics saying what is missing; the lab never
//! skips.
//!
//! ```
//! use std::time::Duration;
//! use persistent_connection_netlab::Lab;
//!
//! let lab = Lab::new();
//! let client = lab.host("client");
//! let server = lab.host("server");
//! let addr = server.addr(7000);
//! let srv = server.runtime();
//! let listener = srv.block_on(async move { tokio::net::TcpListener::bind(addr).await.unwrap() });
//! srv.spawn(async move { loop { let _ = listener.accept().await; } });
//!
//! let rt = client.runtime();
//! assert!(rt.block_on(async move { tokio::net::TcpStream::connect(addr).await }).is_ok());
//!
//! let hole = lab.blackhole(&client, &server);
//! let attempt = rt.block_on(async move {
//!     tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await
//! });
//! assert!(attempt.is_err(), "the SYN is dropped: the connect hangs");
//! lab.lift(hole);
//! // dropping `lab` deletes every namespace it made
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod drills;
pub mod peers;

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// The prefix of every namespace a lab makes; `scripts/netlab.sh` deletes every namespace
/// whose name starts with it.
pub const PREFIX: &str = "pclab-";

/// Labs made by this process so far, for unique prefixes.
static LABS: AtomicUsize = AtomicUsize::new(0);

/// Why a lab could not be built or changed: the command that failed and what it said, or
/// what is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabError(String);

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LabError {}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs a command to completion; an error names it and carries its standard error.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, LabError> {
    let line = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LabError(format!("`{line}`: {e}")))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin was piped");
        pipe.write_all(input.as_bytes())
            .map_err(|e| LabError(format!("`{line}`: writing its input: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| LabError(format!("`{line}`: {e}")))?;
    if !out.status.success() {
        return Err(LabError(format!(
            "`{line}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            stdin.map(|s| format!("\ninput:\n{s}")).unwrap_or_default()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What the lab needs, checked before it changes anything: Linux, root, `ip` and `nft`.
fn check_requirements() -> Result<(), LabError> {
    let mut missing = Vec::new();
    if !cfg!(target_os = "linux") {
        missing.push("Linux (network namespaces)".to_string());
    }
    if !nix::unistd::geteuid().is_root() {
        missing.push(
            "root (creating network namespaces needs CAP_SYS_ADMIN and CAP_NET_ADMIN)".to_string(),
        );
    }
    for (program, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        if Command::new(program)
            .arg(if program == "ip" { "-V" } else { "--version" })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            missing.push(format!("`{program}` (Debian package {package})"));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LabError(format!(
            "the network lab cannot be built: missing {} (`bash scripts/needs.sh` installs the packages; run as root)",
            missing.join(", ")
        )))
    }
}

/// Deletes the namespaces of labs whose process is gone (killed before its labs dropped).
fn remove_stale_labs() {
    let Ok(list) = run("ip", &["netns", "list"], None) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            kill_processes_in(name);
            let _ = run("ip", &["netns", "delete", name], None);
        }
    }
}

/// Kills every process inside namespace `ns` (only programs started in the lab's own
/// namespaces can be there), by process id.
fn kill_processes_in(ns: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", ns], None) {
        for pid in pids.split_whitespace() {
            if pid.parse::<u32>().is_ok_and(|p| p != std::process::id()) {
                let _ = run("kill", &["-KILL", pid], None);
            }
        }
    }
}

/// Enters the network namespace named `ns` on the calling thread.
fn enter(ns: &str) -> Result<(), LabError> {
    let path = format!("/var/run/netns/{ns}");
    let file = File::open(&path).map_err(|e| LabError(format!("opening {path}: {e}")))?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| LabError(format!("setns into {ns}: {e}")))
}

/// Identifies one fault, for [`Lab::lift`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FaultId(u64);

/// One fault, as rules.
#[derive(Clone, Debug)]
enum Fault {
    /// Drop every packet from the first address to the second (in the bridge).
    Drop(Ipv4Addr, Ipv4Addr),
    /// Drop every packet from or to this address (in the bridge).
    Isolate(Ipv4Addr),
    /// Reject packets from the first address at the second host (its input chain).
    Reject(Ipv4Addr, Ipv4Addr),
    /// A fault that comes and goes: present while the flag is set.
    Flapping(Vec<Fault>, Arc<AtomicBool>),
}

struct HostEntry {
    name: String,
    ns: String,
    ip: Ipv4Addr,
}

struct State {
    prefix: String,
    bridge_ns: String,
    hosts: Mutex<Vec<HostEntry>>,
    faults: Mutex<Vec<(FaultId, Fault)>>,
    /// What was last loaded into each namespace, to skip unchanged ones.
    loaded: Mutex<HashMap<String, String>>,
    next_fault: AtomicU64,
    /// Serialises rule updates (a flapping thread and the test change rules concurrently).
    apply: Mutex<()>,
}

impl State {
    fn ns_of(&self, ip: Ipv4Addr) -> Option<String> {
        lock(&self.hosts)
            .iter()
            .find(|h| h.ip == ip)
            .map(|h| h.ns.clone())
    }

    /// Writes the rules of every present fault into the bridge and the hosts.
    fn apply(&self) -> Result<(), LabError> {
        let _serial = lock(&self.apply);
        let mut bridge = Vec::new();
        let mut rejects: HashMap<String, Vec<String>> = HashMap::new();
        fn collect(
            state: &State,
            fault: &Fault,
            bridge: &mut Vec<String>,
            rejects: &mut HashMap<String, Vec<String>>,
        ) {
            match fault {
                Fault::Drop(from, to) => bridge.push(format!("ip saddr {from} ip daddr {to} drop")),
                Fault::Isolate(ip) => {
                    bridge.push(format!("ip saddr {ip} drop"));
                    bridge.push(format!("ip daddr {ip} drop"));
                }
                Fault::Reject(from, at) => {
                    if let Some(ns) = state.ns_of(*at) {
                        let rules = rejects.entry(ns).or_default();
                        // Resets and ICMP pass: with reject both ways, they are the
                        // other side's answers.
                        rules.push(format!(
                            "ip saddr {from} tcp flags & rst == 0 reject with tcp reset"
                        ));
                        rules.push(format!(
                            "ip saddr {from} meta l4proto != {{ tcp, icmp }} reject"
                        ));
                    }
                }
                Fault::Flapping(faults, on) => {
                    if on.load(Ordering::SeqCst) {
                        for f in faults {
                            collect(state, f, bridge, rejects);
                        }
                    }
                }
            }
        }
        for (_, fault) in lock(&self.faults).iter() {
            collect(self, fault, &mut bridge, &mut rejects);
        }
        let mut loaded = lock(&self.loaded);
        let bridge_rules = table("bridge", "forward", &bridge);
        if loaded.get(&self.bridge_ns) != Some(&bridge_rules) {
            load(&self.bridge_ns, &bridge_rules)?;
            loaded.insert(self.bridge_ns.clone(), bridge_rules);
        }
        let host_ns: Vec<String> = lock(&self.hosts).iter().map(|h| h.ns.clone()).collect();
        for ns in host_ns {
            let rules = table(
                "inet",
                "input",
                rejects.get(&ns).map(Vec::as_slice).unwrap_or(&[]),
            );
            if loaded.get(&ns) != Some(&rules) {
                load(&ns, &rules)?;
                loaded.insert(ns, rules);
            }
        }
        Ok(())
    }
}

/// The lab's table in one family: one filter chain `c` on `hook`, holding `rules`. Loaded
/// after `table … lab` is declared and deleted, so the load replaces it whole.
fn table(family: &str, hook: &str, rules: &[String]) -> String {
    let mut s = format!(
        "table {family} lab\ndelete table {family} lab\ntable {family} lab {{\n  chain c {{\n    type filter hook {hook} priority 0; policy accept;\n"
    );
    for rule in rules {
        s.push_str("    ");
        s.push_str(rule);
        s.push('\n');
    }
    s.push_str("  }\n}\n");
    s
}

fn load(ns: &str, rules: &str) -> Result<(), LabError> {
    run("ip", &["netns", "exec", ns, "nft", "-f", "-"], Some(rules)).map(|_| ())
}

/// A flapping fault's thread: its fault, its stop flag, the thread.
type Flapper = (FaultId, Arc<AtomicBool>, JoinHandle<()>);

/// A network lab: hosts in network namespaces joined by a bridge, and faults between them.
/// See the [crate documentation](crate) for the topology, the faults and the teardown.
pub struct Lab {
    state: Arc<State>,
    flappers: Mutex<Vec<Flapper>>,
}

impl fmt::Debug for Lab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lab")
            .field("prefix", &self.state.prefix)
            .field("hosts", &lock(&self.state.hosts).len())
            .field("faults", &lock(&self.state.faults).len())
            .finish()
    }
}

impl Lab {
    /// Builds an empty lab (the bridge and its namespace). Panics, saying what is
    /// missing, when the machine cannot host one (not Linux, not root, no `ip` or `nft`);
    /// see [`Lab::try_new`].
    pub fn new() -> Lab {
        Lab::try_new().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Builds an empty lab, or says what is missing.
    pub fn try_new() -> Result<Lab, LabError> {
        check_requirements()?;
        remove_stale_labs();
        let prefix = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::SeqCst)
        );
        let bridge_ns = format!("{prefix}-bridge");
        let lab = Lab {
            state: Arc::new(State {
                prefix,
                bridge_ns: bridge_ns.clone(),
                hosts: Mutex::new(Vec::new()),
                faults: Mutex::new(Vec::new()),
                loaded: Mutex::new(HashMap::new()),
                next_fault: AtomicU64::new(1),
                apply: Mutex::new(()),
            }),
            flappers: Mutex::new(Vec::new()),
        };
        run("ip", &["netns", "add", &bridge_ns], None)?;
        // From here on, dropping `lab` deletes what was made.
        let b = bridge_ns.as_str();
        run(
            "ip",
            &["-n", b, "link", "add", "br0", "type", "bridge"],
            None,
        )?;
        run("ip", &["-n", b, "link", "set", "br0", "up"], None)?;
        run("ip", &["-n", b, "link", "set", "lo", "up"], None)?;
        lab.state.apply()?;
        Ok(lab)
    }

    /// The name prefix of this lab's namespaces (`pclab-<pid>-<n>`).
    pub fn prefix(&self) -> &str {
        &self.state.prefix
    }

    /// The namespace of the bridge.
    pub fn bridge_netns(&self) -> &str {
        &self.state.bridge_ns
    }

    /// Adds a host: a namespace `<prefix>-<name>` with `lo` and `eth0` up and the next
    /// address of `10.77.0.0/24`, joined to the bridge. `name`: 1–15 lowercase letters,
    /// digits or `_`, unique in the lab, not `bridge`. Panics on failure; see
    /// [`Lab::try_host`].
    pub fn host(&self, name: &str) -> Host {
        self.try_host(name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Adds a host, or says why it could not.
    pub fn try_host(&self, name: &str) -> Result<Host, LabError> {
        if name.is_empty()
            || name.len() > 15
            || name == "bridge"
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(LabError(format!(
                "host name {name:?}: 1-15 lowercase letters, digits or '_', not \"bridge\""
            )));
        }
        let ns = format!("{}-{name}", self.state.prefix);
        let (index, ip) = {
            let mut hosts = lock(&self.state.hosts);
            if hosts.iter().any(|h| h.name == name) {
                return Err(LabError(format!("host {name:?} exists already")));
            }
            if hosts.len() >= 250 {
                return Err(LabError("a lab holds at most 250 hosts".into()));
            }
            let index = hosts.len();
            let ip = Ipv4Addr::new(10, 77, 0, index as u8 + 1);
            run("ip", &["netns", "add", &ns], None)?;
            hosts.push(HostEntry {
                name: name.to_string(),
                ns: ns.clone(),
                ip,
            });
            (index, ip)
        };
        let b = self.state.bridge_ns.as_str();
        let port = format!("p{index}");
        let cidr = format!("{ip}/24");
        for args in [
            vec!["-n", &ns, "link", "set", "lo", "up"],
            vec![
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", b,
            ],
            vec!["-n", b, "link", "set", &port, "master", "br0"],
            vec!["-n", b, "link", "set", &port, "up"],
            vec!["-n", &ns, "addr", "add", &cidr, "dev", "eth0"],
            vec!["-n", &ns, "link", "set", "eth0", "up"],
        ] {
            run("ip", &args, None)?;
        }
        self.state.apply()?;
        Ok(Host {
            name: name.to_string(),
            ns,
            ip,
        })
    }

    fn add(&self, fault: Fault) -> FaultId {
        let id = FaultId(self.state.next_fault.fetch_add(1, Ordering::SeqCst));
        lock(&self.state.faults).push((id, fault));
        self.state.apply().unwrap_or_else(|e| panic!("{e}"));
        id
    }

    /// Every packet between `a` and `b` is dropped, both ways.
    pub fn blackhole(&self, a: &Host, b: &Host) -> FaultId {
        self.partition(&[a], &[b])
    }

    /// Every packet from or to `host` is dropped: the host vanished for everyone else
    /// (also for hosts added later).
    pub fn isolate(&self, host: &Host) -> FaultId {
        self.add(Fault::Isolate(host.ip))
    }

    /// Packets from `from` to `to` are dropped; the other direction works.
    pub fn drop_one_way(&self, from: &Host, to: &Host) -> FaultId {
        self.add(Fault::Drop(from.ip, to.ip))
    }

    /// Every packet between a host of `side_a` and a host of `side_b` is dropped, both
    /// ways; hosts on the same side still reach each other.
    pub fn partition(&self, side_a: &[&Host], side_b: &[&Host]) -> FaultId {
        self.add(Fault::Flapping(
            pairs(side_a, side_b),
            Arc::new(AtomicBool::new(true)),
        ))
    }

    /// TCP segments between `a` and `b` are answered by a reset, other packets by ICMP
    /// port unreachable, both ways: established connections between them are reset at
    /// their next segment and new ones are refused.
    pub fn reject(&self, a: &Host, b: &Host) -> FaultId {
        self.add(Fault::Flapping(
            vec![Fault::Reject(a.ip, b.ip), Fault::Reject(b.ip, a.ip)],
            Arc::new(AtomicBool::new(true)),
        ))
    }

    /// A black hole between `a` and `b` that comes and goes: on at once for `period`, then
    /// off for `period`, and so on until lifted (or [`heal`](Lab::heal)ed).
    pub fn flap(&self, a: &Host, b: &Host, period: Duration) -> FaultId {
        self.flap_partition(&[a], &[b], period)
    }

    /// A [`partition`](Lab::partition) that comes and goes like [`flap`](Lab::flap).
    pub fn flap_partition(&self, side_a: &[&Host], side_b: &[&Host], period: Duration) -> FaultId {
        let on = Arc::new(AtomicBool::new(true));
        let id = self.add(Fault::Flapping(pairs(side_a, side_b), on.clone()));
        let stop = Arc::new(AtomicBool::new(false));
        let state = self.state.clone();
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("netlab-flap-{}", id.0))
            .spawn(move || {
                let tick = Duration::from_millis(10);
                loop {
                    let mut waited = Duration::ZERO;
                    while waited < period {
                        if stop2.load(Ordering::SeqCst) {
                            return;
                        }
                        std::thread::sleep(tick.min(period - waited));
                        waited += tick;
                    }
                    on.fetch_xor(true, Ordering::SeqCst);
                    if let Err(e) = state.apply() {
                        eprintln!("netlab: flapping {id:?}: {e}");
                    }
                }
            })
            .expect("spawning the flapping thread");
        lock(&self.flappers).push((id, stop, thread));
        id
    }

    /// Removes one fault (a flap stops, with its black hole off).
    pub fn lift(&self, id: FaultId) {
        self.stop_flappers(|f| f == id);
        lock(&self.state.faults).retain(|(f, _)| *f != id);
        self.state.apply().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.stop_flappers(|_| true);
        lock(&self.state.faults).clear();
        self.state.apply().unwrap_or_else(|e| panic!("{e}"));
    }

    /// The rules in force now, per namespace (`nft list ruleset`), for a failing test's
    /// message.
    pub fn ruleset(&self) -> String {
        let mut out = String::new();
        let mut names = vec![self.state.bridge_ns.clone()];
        names.extend(lock(&self.state.hosts).iter().map(|h| h.ns.clone()));
        for ns in names {
            let rules = run(
                "ip",
                &["netns", "exec", &ns, "nft", "list", "ruleset"],
                None,
            )
            .unwrap_or_else(|e| e.to_string());
            out.push_str(&format!("# {ns}\n{rules}"));
        }
        out
    }

    fn stop_flappers(&self, which: impl Fn(FaultId) -> bool) {
        let stopped: Vec<_> = {
            let mut flappers = lock(&self.flappers);
            let (stop, keep) = std::mem::take(&mut *flappers)
                .into_iter()
                .partition(|(id, _, _)| which(*id));
            *flappers = keep;
            stop
        };
        for (_, stop, thread) in stopped {
            stop.store(true, Ordering::SeqCst);
            let _ = thread.join();
        }
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

fn pairs(side_a: &[&Host], side_b: &[&Host]) -> Vec<Fault> {
    let mut faults = Vec::new();
    for a in side_a {
        for b in side_b {
            faults.push(Fault::Drop(a.ip, b.ip));
            faults.push(Fault::Drop(b.ip, a.ip));
        }
    }
    faults
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_flappers(|_| true);
        let mut names: Vec<String> = lock(&self.state.hosts)
            .iter()
            .map(|h| h.ns.clone())
            .collect();
        names.push(self.state.bridge_ns.clone());
        for ns in &names {
            kill_processes_in(ns);
        }
        for ns in &names {
            if let Err(e) = run("ip", &["netns", "delete", ns], None) {
                eprintln!("netlab: teardown: {e}");
            }
        }
    }
}

/// A host of a [`Lab`]: a network namespace with one address. Cheap to clone; valid while
/// its lab lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    name: String,
    ns: String,
    ip: Ipv4Addr,
}

impl Host {
    /// The name given to [`Lab::host`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's namespace (`<prefix>-<name>`), for `ip netns exec`.
    pub fn netns(&self) -> &str {
        &self.ns
    }

    /// The host's address on the lab's network.
    pub fn ip(&self) -> IpAddr {
        IpAddr::V4(self.ip)
    }

    /// The host's address with `port`.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip(), port)
    }

    /// A command that runs `program` inside the host (`ip netns exec <ns> <program>`);
    /// add arguments and spawn it as usual. Processes still in the host when the lab
    /// drops are killed.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// Runs `f` on a new thread that entered the host's namespace. Sockets made there live
    /// in the host (also when moved to another thread).
    pub fn thread<T, F>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let ns = self.ns.clone();
        std::thread::Builder::new()
            .name(format!("netlab-{}", self.name))
            .spawn(move || {
                enter(&ns).unwrap_or_else(|e| panic!("{e}"));
                f()
            })
            .expect("spawning a host thread")
    }

    /// A Tokio runtime (multi-thread, `workers` worker threads, I/O and time enabled)
    /// every thread of which, the blocking pool's included, is inside the host.
    pub fn runtime_with(&self, workers: usize) -> HostRuntime {
        enter_check(&self.ns);
        let ns = self.ns.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name(format!("netlab-{}", self.name))
            .enable_all()
            .on_thread_start(move || enter(&ns).unwrap_or_else(|e| panic!("{e}")))
            .build()
            .expect("building a host runtime");
        HostRuntime {
            rt: Some(rt),
            host: self.name.clone(),
        }
    }

    /// [`runtime_with`](Host::runtime_with) one worker thread.
    pub fn runtime(&self) -> HostRuntime {
        self.runtime_with(1)
    }
}

/// Panics now, on the caller's thread, if the namespace cannot be entered (instead of on a
/// runtime's thread later).
fn enter_check(ns: &str) {
    let path = format!("/var/run/netns/{ns}");
    if let Err(e) = File::open(&path) {
        panic!("host namespace {path}: {e}");
    }
}

/// A Tokio runtime whose threads are inside a [`Host`]. Dropping it shuts it down without
/// waiting for its tasks.
pub struct HostRuntime {
    rt: Option<tokio::runtime::Runtime>,
    host: String,
}

impl fmt::Debug for HostRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostRuntime")
            .field("host", &self.host)
            .finish()
    }
}

impl HostRuntime {
    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("present until drop")
    }

    /// Runs `future` as a task of this runtime (inside the host) and waits for its output
    /// on the calling thread; a panic in it is resumed here.
    pub fn block_on<F>(&self, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let task = self.rt().spawn(future);
        match self.rt().block_on(task) {
            Ok(out) => out,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("host task of {}: {e}", self.host),
        }
    }

    /// Starts `future` as a task inside the host.
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.rt().spawn(future)
    }

    /// The runtime's handle (code spawned through it runs inside the host; code run by
    /// `Handle::block_on` runs on the calling thread, which is not).
    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.rt().handle()
    }
}

impl Drop for HostRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
