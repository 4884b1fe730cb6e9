//! The lab itself: each fault really drops or rejects what it says, lifting it restores
//! the path, and dropping the lab (also while panicking) leaves no namespace of its own.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use persistent_connection_netlab::{Host, HostRuntime, Lab, PREFIX};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a connect or read may take before the path counts as dropping packets (the
/// lab's links answer in well under a millisecond).
const SILENT: Duration = Duration::from_millis(400);

/// An echo server on `host`:7000, on its own runtime.
fn echo(host: &Host) -> (HostRuntime, SocketAddr) {
    let rt = host.runtime();
    let addr = host.addr(7000);
    let listener = rt.block_on(async move { TcpListener::bind(addr).await.unwrap() });
    rt.spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (rt, addr)
}

/// What a connect from `rt`'s host to `addr` does within [`SILENT`].
#[derive(Debug, PartialEq)]
enum Connect {
    Ok,
    Refused,
    Hangs,
    Other(io::ErrorKind),
}

fn connect(rt: &HostRuntime, addr: SocketAddr) -> Connect {
    rt.block_on(async move {
        match tokio::time::timeout(SILENT, TcpStream::connect(addr)).await {
            Err(_) => Connect::Hangs,
            Ok(Ok(_)) => Connect::Ok,
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => Connect::Refused,
            Ok(Err(e)) => Connect::Other(e.kind()),
        }
    })
}

fn our_namespaces(prefix: &str) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(str::to_string)
        .collect()
}

#[test]
fn hosts_reach_each_other_and_a_black_hole_drops_both_ways_until_lifted() {
    let lab = Lab::new();
    let a = lab.host("a");
    let b = lab.host("b");
    let (_srv_b, addr_b) = echo(&b);
    let (_srv_a, addr_a) = echo(&a);
    let rt_a = a.runtime();
    let rt_b = b.runtime();
    assert_eq!(connect(&rt_a, addr_b), Connect::Ok);
    assert_eq!(connect(&rt_b, addr_a), Connect::Ok);

    // An established connection goes silent too: the echo never comes back.
    let stream = rt_a.block_on(async move { TcpStream::connect(addr_b).await.unwrap() });
    let hole = lab.blackhole(&a, &b);
    assert_eq!(connect(&rt_a, addr_b), Connect::Hangs, "{}", lab.ruleset());
    assert_eq!(connect(&rt_b, addr_a), Connect::Hangs);
    let (stream, silent) = rt_a.block_on(async move {
        let mut stream = stream;
        stream.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        let silent = tokio::time::timeout(SILENT, stream.read_exact(&mut buf))
            .await
            .is_err();
        (stream, silent)
    });
    assert!(silent, "an echo crossed the black hole");

    lab.lift(hole);
    assert_eq!(connect(&rt_a, addr_b), Connect::Ok);
    // The same connection recovers: TCP retransmits what was lost.
    rt_a.block_on(async move {
        let mut stream = stream;
        let mut buf = [0; 4];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf))
            .await
            .expect("the retransmitted echo")
            .unwrap();
        assert_eq!(&buf, b"ping");
    });
}

#[test]
fn reject_resets_connections_and_refuses_new_ones() {
    let lab = Lab::new();
    let a = lab.host("a");
    let b = lab.host("b");
    let (_srv, addr) = echo(&b);
    let rt = a.runtime();
    let stream = rt.block_on(async move { TcpStream::connect(addr).await.unwrap() });
    let _reject = lab.reject(&a, &b);
    assert_eq!(connect(&rt, addr), Connect::Refused, "{}", lab.ruleset());
    let started = Instant::now();
    let read = rt.block_on(async move {
        let mut stream = stream;
        stream.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        tokio::time::timeout(SILENT, stream.read(&mut buf)).await
    });
    match read {
        Ok(Err(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
        other => panic!("expected a reset, got {other:?}"),
    }
    assert!(started.elapsed() < SILENT);
    lab.heal();
    assert_eq!(connect(&rt, addr), Connect::Ok);
}

#[test]
fn drop_one_way_drops_one_direction_only() {
    let lab = Lab::new();
    let client = lab.host("client");
    let server = lab.host("server");
    let rt_s = server.runtime();
    let addr = server.addr(7000);
    let listener = rt_s.block_on(async move { TcpListener::bind(addr).await.unwrap() });
    let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel();
    rt_s.spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0; 64];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let _ = got_tx.send(buf[..n].to_vec());
        }
    });
    let rt_c = client.runtime();
    let stream = rt_c.block_on(async move { TcpStream::connect(addr).await.unwrap() });

    // Server to client lost: what the client sends still arrives.
    let one_way = lab.drop_one_way(&server, &client);
    let stream = rt_c.block_on(async move {
        let mut stream = stream;
        stream.write_all(b"one").await.unwrap();
        stream
    });
    let got = rt_s.block_on(async move {
        let got = tokio::time::timeout(SILENT, got_rx.recv()).await;
        (got, got_rx)
    });
    let (got, mut got_rx) = got;
    assert_eq!(got.expect("the bytes arrive").unwrap(), b"one");
    lab.lift(one_way);

    // Client to server lost: nothing arrives.
    let _one_way = lab.drop_one_way(&client, &server);
    rt_c.block_on(async move {
        let mut stream = stream;
        stream.write_all(b"two").await.unwrap();
        std::mem::forget(stream); // keep the connection open past the block
    });
    let got = rt_s.block_on(async move { tokio::time::timeout(SILENT, got_rx.recv()).await });
    assert!(got.is_err(), "bytes crossed a dropped direction: {got:?}");
    assert_eq!(connect(&rt_c, addr), Connect::Hangs);
}

#[test]
fn a_partition_cuts_across_sides_only_and_isolate_cuts_a_host_off() {
    let lab = Lab::new();
    let a = lab.host("a");
    let b = lab.host("b");
    let c = lab.host("c");
    let (_srv_b, addr_b) = echo(&b);
    let (_srv_c, addr_c) = echo(&c);
    let rt_a = a.runtime();
    let rt_b = b.runtime();
    let cut = lab.partition(&[&a, &b], &[&c]);
    assert_eq!(connect(&rt_a, addr_b), Connect::Ok);
    assert_eq!(connect(&rt_a, addr_c), Connect::Hangs);
    assert_eq!(connect(&rt_b, addr_c), Connect::Hangs);
    lab.lift(cut);
    assert_eq!(connect(&rt_a, addr_c), Connect::Ok);
    let gone = lab.isolate(&c);
    assert_eq!(connect(&rt_a, addr_c), Connect::Hangs);
    assert_eq!(connect(&rt_b, addr_c), Connect::Hangs);
    assert_eq!(connect(&rt_a, addr_b), Connect::Ok);
    lab.lift(gone);
    assert_eq!(connect(&rt_b, addr_c), Connect::Ok);
}

#[test]
fn flap_turns_the_black_hole_on_and_off() {
    let lab = Lab::new();
    let a = lab.host("a");
    let b = lab.host("b");
    let (_srv, addr) = echo(&b);
    let rt = a.runtime();
    let period = Duration::from_millis(700);
    let start = Instant::now();
    let flap = lab.flap(&a, &b, period);
    // Sample the path every 100 ms for two periods: both states are seen.
    let mut seen = Vec::new();
    while start.elapsed() < period * 2 + Duration::from_millis(200) {
        let r = rt.block_on(async move {
            tokio::time::timeout(Duration::from_millis(80), TcpStream::connect(addr))
                .await
                .is_ok_and(|r| r.is_ok())
        });
        seen.push(r);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!seen[0], "on at once: {seen:?}");
    assert!(seen.iter().any(|ok| *ok), "never off: {seen:?}");
    lab.lift(flap);
    assert_eq!(connect(&rt, addr), Connect::Ok);
}

#[test]
fn commands_and_threads_run_inside_the_host() {
    let lab = Lab::new();
    let a = lab.host("a");
    let out = a
        .command("ip")
        .args(["-4", "-o", "addr", "show", "dev", "eth0"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("10.77.0.1/24"),
        "{out:?}"
    );
    // A thread of the host binds its address (which the root namespace does not have).
    let ip = a.ip();
    let bound = a
        .thread(move || std::net::TcpListener::bind((ip, 0)).map(|_| ()))
        .join()
        .unwrap();
    assert!(bound.is_ok(), "{bound:?}");
    assert!(std::net::TcpListener::bind((ip, 0)).is_err());
}

#[test]
fn dropping_the_lab_removes_its_namespaces_and_processes_also_on_panic() {
    let lab = Lab::new();
    let prefix = lab.prefix().to_string();
    let a = lab.host("a");
    lab.host("b");
    lab.blackhole(&a, &lab.host("c"));
    let mut sleeper = a.command("sleep").arg("60").spawn().unwrap();
    assert_eq!(our_namespaces(&prefix).len(), 4);
    drop(lab);
    assert_eq!(our_namespaces(&prefix), Vec::<String>::new());
    let waited = sleeper.wait().unwrap();
    assert!(!waited.success(), "the process in the host was killed");

    let mut prefix = String::new();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::new();
        prefix = lab.prefix().to_string();
        let a = lab.host("a");
        let b = lab.host("b");
        lab.flap(&a, &b, Duration::from_millis(50));
        panic!("a failing drill");
    }));
    assert!(caught.is_err());
    assert!(prefix.starts_with(PREFIX));
    assert_eq!(our_namespaces(&prefix), Vec::<String>::new());
}

#[test]
fn bad_host_names_are_refused() {
    let lab = Lab::new();
    lab.host("a");
    assert!(lab.try_host("a").is_err(), "duplicate");
    assert!(lab.try_host("bridge").is_err());
    assert!(lab.try_host("Has-Caps").is_err());
    assert!(lab.try_host("").is_err());
}
