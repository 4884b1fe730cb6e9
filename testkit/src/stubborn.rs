//! stubborn-io as the benchmarks configure it (the storm and failover benchmarks, the Redis
//! drill's comparison and the `stubborn_lost_request` probe in `bench/`): a TCP stream
//! whose every (re)connect looks the address up again ([`LookupStream`] over a [`Lookup`],
//! e.g. a [`SharedAddr`]), and the retry schedule the benchmarks chose for it
//! ([`options`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use stubborn_io::ReconnectOptions;
use stubborn_io::strategies::ExpBackoffStrategy;
use stubborn_io::tokio::UnderlyingIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Where a [`LookupStream`] connects, asked again before every (re)connect.
pub trait Lookup: Clone + Send + Unpin + 'static {
    /// The address to connect to now.
    fn lookup(&self) -> io::Result<SocketAddr>;

    /// Connects to it (`TCP_NODELAY` set); override to count or log attempts.
    fn connect(addr: SocketAddr) -> impl Future<Output = io::Result<TcpStream>> + Send {
        async move {
            let s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Ok(s)
        }
    }
}

/// An address that can be moved (a one-entry catalog).
#[derive(Clone, Debug)]
pub struct SharedAddr(Arc<Mutex<SocketAddr>>);

impl SharedAddr {
    /// Publishes `addr`.
    pub fn new(addr: SocketAddr) -> SharedAddr {
        SharedAddr(Arc::new(Mutex::new(addr)))
    }

    /// The published address.
    pub fn get(&self) -> SocketAddr {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes another address.
    pub fn set(&self, addr: SocketAddr) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = addr;
    }
}

impl Lookup for SharedAddr {
    fn lookup(&self) -> io::Result<SocketAddr> {
        Ok(self.get())
    }
}

/// A TCP stream for `StubbornIo<LookupStream, L>`: every (re)connect looks the address up.
#[derive(Debug)]
pub struct LookupStream(TcpStream);

impl<L: Lookup> UnderlyingIo<L> for LookupStream {
    fn establish(target: L) -> Pin<Box<dyn Future<Output = io::Result<Self>> + Send>> {
        Box::pin(async move {
            let addr = target.lookup()?;
            L::connect(addr).await.map(LookupStream)
        })
    }
}

impl AsyncRead for LookupStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for LookupStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The schedule the benchmarks give stubborn-io: its own `ExpBackoffStrategy` defaults
/// (×2, ±5 %) but the base delay, which is the benchmark's; it keeps retrying after a
/// failed first connect.
pub fn options(base: Duration) -> ReconnectOptions {
    ReconnectOptions::new()
        .with_exit_if_first_connect_fails(false)
        .with_retries_generator(move || ExpBackoffStrategy::new(base, 2.0, 0.05))
}
