//! The stream under hyper, watched: the server's frame headers are read as they pass, so
//! that a `GOAWAY` is seen at once, and writes to a stream that already closed count as done.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn::closable::Closable;

use super::*;

/// Finds `GOAWAY` frames in what the server sends. hyper takes note of a `GOAWAY` only when
/// the next call is made (its dispatch task is not woken by one), so the connection reads
/// the frame headers itself: a frame is a 9-byte header (24-bit length, type, flags, stream
/// id) and its payload; a `GOAWAY` (type 7) carries the last stream id and the error code
/// in its first 8 bytes. The server's preface is an ordinary `SETTINGS` frame, so frames
/// start at the first byte.
#[derive(Debug, Default)]
pub(super) struct FrameScan {
    pub(super) header: [u8; 9],
    pub(super) header_len: usize,
    /// Payload bytes of the current frame still to pass.
    pub(super) payload_left: usize,
    /// The current frame is a `GOAWAY`: its first 8 payload bytes, as they come.
    pub(super) goaway: Option<([u8; 8], usize)>,
}

impl FrameScan {
    /// Passes `data` (the next bytes from the server); calls `on_goaway(error_code)` for
    /// every complete `GOAWAY` payload head.
    pub(super) fn scan(&mut self, mut data: &[u8], mut on_goaway: impl FnMut(u32)) {
        while !data.is_empty() {
            if self.payload_left == 0 {
                let n = (9 - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
                self.header_len += n;
                data = &data[n..];
                if self.header_len == 9 {
                    self.header_len = 0;
                    let h = self.header;
                    self.payload_left =
                        (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                    // A GOAWAY shorter than 8 bytes is malformed: hyper fails the connection.
                    self.goaway = (h[3] == 0x7 && self.payload_left >= 8).then_some(([0; 8], 0));
                }
                continue;
            }
            let n = self.payload_left.min(data.len());
            if let Some((head, have)) = &mut self.goaway {
                let take = (8 - *have).min(n);
                head[*have..*have + take].copy_from_slice(&data[..take]);
                *have += take;
                if *have == 8 {
                    on_goaway(u32::from_be_bytes([head[4], head[5], head[6], head[7]]));
                    self.goaway = None;
                }
            }
            self.payload_left -= n;
            data = &data[n..];
        }
    }
}

/// The stream as hyper sees it: reads pass through [`FrameScan`], which marks the
/// connection draining on a `GOAWAY`.
pub(super) struct Sniffed<T> {
    pub(super) io: T,
    pub(super) frames: FrameScan,
    pub(super) shared: Arc<Shared>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Sniffed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let this = &mut *self;
            let shared = &this.shared;
            if buf.filled().len() > before {
                shared.heard.store(true, Ordering::Release);
            }
            this.frames.scan(&buf.filled()[before..], |error_code| {
                shared.begin_close(Http2End::GoAway { error_code });
                shared.goaway.send_replace(true);
            });
        }
        polled
    }
}

impl<T: Closable> Sniffed<T> {
    /// A write to a stream that has closed under it (the peer closed: our `TcpConnection`
    /// releases its write half at end of file) counts as done. h2 flushes before it reads
    /// on, and a failed flush would end the connection before it reads what the server
    /// sent last — its answer to a call in flight, which a server that shuts down sends
    /// just before it closes. What is written then could not reach the peer anyway.
    pub(super) fn after_close<R>(
        &self,
        polled: Poll<std::io::Result<R>>,
        done: R,
    ) -> Poll<std::io::Result<R>> {
        match polled {
            Poll::Ready(Err(e))
                if e.kind() == std::io::ErrorKind::NotConnected && self.io.is_closed() =>
            {
                Poll::Ready(Ok(done))
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Closable + Unpin> AsyncWrite for Sniffed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.after_close(polled, buf.len())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.after_close(polled, ())
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.after_close(polled, ())
    }
}
