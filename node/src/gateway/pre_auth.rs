//! What an unauthenticated client may cost a node: one of `gateway.max_unauthenticated`
//! places, and at most [`PRE_AUTH_BYTES`] read from its connection, until it authenticates.
//!
//! The WebSocket layer buffers a whole frame (up to twice `max_message_bytes`) before the
//! session sees it, so checking a frame's size in the session alone still lets anyone make
//! the node hold megabytes per socket. Metering the bytes under the WebSocket layer bounds
//! that before any frame is assembled, and the separate count keeps idle or slow sockets from
//! taking the places authenticated clients need.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes an unauthenticated client may send in all: its WebSocket handshake, its `auth` frame
/// (at most 4 KiB), a few pings.
pub(crate) const PRE_AUTH_BYTES: usize = 64 * 1024;

/// One connection's standing: unauthenticated (holding one of the node's places for those)
/// until [`Gate::pass`].
pub(crate) struct Gate {
    passed: AtomicBool,
    waiting: Arc<AtomicUsize>,
}

impl Gate {
    /// A place among `max` unauthenticated connections counted in `waiting`, if one is free.
    pub(crate) fn enter(waiting: &Arc<AtomicUsize>, max: usize) -> Option<Arc<Gate>> {
        waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Arc::new(Gate {
            passed: AtomicBool::new(false),
            waiting: waiting.clone(),
        }))
    }

    /// The client authenticated: its place is free for another, and it reads unmetered.
    pub(crate) fn pass(&self) {
        if !self.passed.swap(true, Ordering::AcqRel) {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn passed(&self) -> bool {
        self.passed.load(Ordering::Acquire)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.pass();
    }
}

/// A connection's stream, metered until its gate is passed.
pub(crate) struct Metered<S> {
    inner: S,
    gate: Arc<Gate>,
    left: usize,
}

impl<S> Metered<S> {
    pub(crate) fn new(inner: S, gate: Arc<Gate>) -> Self {
        Metered {
            inner,
            gate,
            left: PRE_AUTH_BYTES,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.gate.passed() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if this.left == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("sent {PRE_AUTH_BYTES} bytes without authenticating"),
            )));
        }
        if buf.remaining() <= this.left {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            this.left -= buf.filled().len() - before;
            return Poll::Ready(Ok(()));
        }
        // Never read past what is left, even into a buffer with room for more.
        let mut room = vec![0u8; this.left];
        let mut small = ReadBuf::new(&mut room);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut small))?;
        let n = small.filled().len();
        buf.put_slice(&room[..n]);
        this.left -= n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn an_unauthenticated_stream_reads_its_budget_then_fails_until_passed() {
        let waiting = Arc::new(AtomicUsize::new(0));
        let gate = Gate::enter(&waiting, 1).unwrap();
        assert!(Gate::enter(&waiting, 1).is_none(), "one place only");
        let (client, server) = tokio::io::duplex(1 << 20);
        let mut metered = Metered::new(server, gate.clone());
        let mut client = client;
        client
            .write_all(&vec![7u8; PRE_AUTH_BYTES + 10])
            .await
            .unwrap();
        let mut got = vec![0u8; PRE_AUTH_BYTES + 10];
        let mut read = 0;
        let err = loop {
            match metered.read(&mut got[read..]).await {
                Ok(n) => read += n,
                Err(e) => break e,
            }
        };
        assert_eq!(read, PRE_AUTH_BYTES);
        assert!(err.to_string().contains("without authenticating"), "{err}");
        // Once authenticated: the rest reads, and the place is free.
        gate.pass();
        assert_eq!(waiting.load(Ordering::Acquire), 0);
        assert_eq!(metered.read(&mut got[read..]).await.unwrap(), 10);
        drop(metered);
        drop(gate);
        assert_eq!(waiting.load(Ordering::Acquire), 0, "freed once");
        // A connection that ends unauthenticated frees its place too.
        let g = Gate::enter(&waiting, 1).unwrap();
        drop(g);
        assert!(Gate::enter(&waiting, 1).is_some());
    }
}
