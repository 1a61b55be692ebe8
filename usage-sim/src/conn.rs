//! One accepted connection as the misbehaving answers see it (`super::misbehave`).
//!
//! `SimIo` wraps the `TcpStream` that hyper drives and shares a `Conn` with every response of
//! that connection. Guarantees:
//! - `Conn::poll_flushed_since(mark)` is ready once hyper has flushed after `mark` was taken:
//!   hyper flushes the socket only when its write buffer is empty, so a chunk handed to hyper
//!   before `mark` has then reached the kernel.
//! - After `Conn::reset_on_close`, dropping the `SimIo` closes the socket with `SO_LINGER` 0,
//!   so the peer gets a TCP RST instead of a FIN. No other connection is touched.
//!
//! The cost for ordinary traffic is one allocation per connection and an atomic increment per
//! flush.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// State shared by a connection's socket wrapper and its response bodies.
#[derive(Debug, Default)]
pub(crate) struct Conn {
    /// Completed flushes of the socket.
    flushes: AtomicU64,
    /// Set while `waiting` holds wakers, so that a flush with nobody waiting takes no lock.
    any_waiting: AtomicBool,
    waiting: Mutex<Vec<Waker>>,
    reset_on_close: AtomicBool,
}

impl Conn {
    /// A mark to pass to `poll_flushed_since`.
    pub fn flush_mark(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }

    /// Ready once the socket has been flushed after `mark` was taken.
    pub fn poll_flushed_since(&self, mark: u64, cx: &mut Context<'_>) -> Poll<()> {
        if self.flushes.load(Ordering::SeqCst) > mark {
            return Poll::Ready(());
        }
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(cx.waker().clone());
        self.any_waiting.store(true, Ordering::SeqCst);
        // A flush between the first check and the registration may have missed the waker.
        if self.flushes.load(Ordering::SeqCst) > mark {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Records a completed flush and wakes the waiters.
    pub fn flushed(&self) {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        if self.any_waiting.swap(false, Ordering::SeqCst) {
            let wakers =
                std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|p| p.into_inner()));
            wakers.into_iter().for_each(Waker::wake);
        }
    }

    /// Makes the eventual close of this connection a TCP reset.
    pub fn reset_on_close(&self) {
        self.reset_on_close.store(true, Ordering::SeqCst);
    }

    /// Whether closing this connection will reset it.
    pub fn resets_on_close(&self) -> bool {
        self.reset_on_close.load(Ordering::SeqCst)
    }
}

/// The socket hyper reads and writes, reporting flushes and resetting on close when asked.
#[derive(Debug)]
pub(crate) struct SimIo {
    stream: TcpStream,
    conn: Arc<Conn>,
}

impl SimIo {
    pub fn new(stream: TcpStream, conn: Arc<Conn>) -> SimIo {
        SimIo { stream, conn }
    }
}

impl Drop for SimIo {
    fn drop(&mut self) {
        if self.conn.resets_on_close() {
            // Zero linger never blocks: the close discards unsent data and sends RST.
            if let Err(error) = self.stream.set_zero_linger() {
                tracing::debug!(%error, "could not set SO_LINGER 0; the close will be a FIN");
            }
        }
    }
}

impl AsyncRead for SimIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.stream).poll_flush(cx);
        if let Poll::Ready(Ok(())) = res {
            self.conn.flushed();
        }
        res
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_flush_after_the_mark_wakes_and_readies_the_waiter() {
        let conn = Conn::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let mark = conn.flush_mark();
        assert!(conn.poll_flushed_since(mark, &mut cx).is_pending());
        conn.flushed();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(conn.poll_flushed_since(mark, &mut cx).is_ready());
        assert!(conn
            .poll_flushed_since(conn.flush_mark(), &mut cx)
            .is_pending());
    }
}
