//! A socket that reads and writes in bursts but holds no buffer while idle.
//!
//! tungstenite reads into a small buffer (memory per idle connection) and, with no write buffer,
//! writes every frame with its own system call. Under load that is a system call per few frames
//! read and one per frame written. [`BurstIo`] takes all the kernel has in one read, into a
//! per-thread scratch buffer, and keeps what the caller has no room for only until it is taken;
//! writes gather until the next flush and go out in one system call. Both buffers are freed as
//! soon as they are empty, so an idle connection pays nothing for them.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most one read takes from the kernel (per worker thread, not per connection).
pub const READ_BURST_BYTES: usize = 16 * 1024;
/// The most writes gather before they go out without waiting for a flush.
pub const WRITE_BURST_BYTES: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_BURST_BYTES].into_boxed_slice());
}

/// Bytes held for a while, and how many of them were already handed on.
#[derive(Debug, Default)]
struct Held {
    bytes: Vec<u8>,
    done: usize,
}

impl Held {
    fn pending(&self) -> &[u8] {
        self.bytes.get(self.done..).unwrap_or_default()
    }

    /// Marks `count` more bytes handed on; frees the buffer once all are.
    fn consume(&mut self, count: usize) {
        self.done += count;
        if self.done >= self.bytes.len() {
            *self = Held::default();
        }
    }

    /// Adds bytes after the pending ones, dropping those already handed on first.
    fn append(&mut self, data: &[u8]) {
        self.bytes.drain(..self.done);
        self.done = 0;
        self.bytes.extend_from_slice(data);
    }
}

/// An I/O stream with burst reads and gathered writes (see the module's documentation).
#[derive(Debug)]
pub struct BurstIo<S> {
    inner: S,
    read_ahead: Held,
    unwritten: Held,
}

impl<S> BurstIo<S> {
    /// Wraps a stream.
    pub fn new(inner: S) -> BurstIo<S> {
        BurstIo {
            inner,
            read_ahead: Held::default(),
            unwritten: Held::default(),
        }
    }
}

impl<S: AsyncWrite + Unpin> BurstIo<S> {
    /// Writes what gathered until it is all out or the stream would block.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.unwritten.pending().is_empty() {
            let written =
                ready!(Pin::new(&mut self.inner).poll_write(cx, self.unwritten.pending()))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.unwritten.consume(written);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for BurstIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let held = this.read_ahead.pending();
        if !held.is_empty() {
            let count = held.len().min(buf.remaining());
            buf.put_slice(&held[..count]);
            this.read_ahead.consume(count);
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= READ_BURST_BYTES {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        SCRATCH.with_borrow_mut(|scratch| {
            let mut burst = ReadBuf::new(scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut burst))?;
            let read = burst.filled();
            let count = read.len().min(buf.remaining());
            buf.put_slice(&read[..count]);
            if count < read.len() {
                this.read_ahead.bytes = read[count..].to_vec();
            }
            Poll::Ready(Ok(()))
        })
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for BurstIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.unwritten.pending().len() + data.len() > WRITE_BURST_BYTES {
            ready!(this.poll_write_out(cx))?;
            if data.len() >= WRITE_BURST_BYTES {
                return Pin::new(&mut this.inner).poll_write(cx, data);
            }
        }
        this.unwritten.append(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A stream that records each write it is given and has `input` to read, all at once.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        input: Vec<u8>,
        reads: usize,
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.reads += 1;
            let count = self.input.len().min(buf.remaining());
            let rest = self.input.split_off(count);
            buf.put_slice(&self.input);
            self.input = rest;
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.push(data.to_vec());
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn numbered(count: usize) -> Vec<u8> {
        (0..count).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_burst_is_read_in_one_read_and_handed_out_in_small_pieces() {
        let input = numbered(READ_BURST_BYTES + 3000);
        let mut io = BurstIo::new(Recorder {
            input: input.clone(),
            ..Recorder::default()
        });
        let mut out = Vec::new();
        let mut piece = [0u8; 512];
        while out.len() < input.len() {
            let count = io.read(&mut piece).await.expect("reads");
            assert!(count > 0, "no early end");
            out.extend_from_slice(&piece[..count]);
        }
        assert_eq!(out, input, "every byte, in order");
        assert_eq!(io.inner.reads, 2, "one read per burst of the kernel's");
        assert_eq!(io.read_ahead.bytes.capacity(), 0, "nothing held once taken");
        assert_eq!(
            io.read(&mut piece).await.expect("reads"),
            0,
            "the end passes through"
        );
    }

    #[tokio::test]
    async fn writes_gather_until_a_flush_and_go_out_in_one_write() {
        let mut io = BurstIo::new(Recorder::default());
        let frames: Vec<Vec<u8>> = (1..=20).map(numbered).collect();
        for frame in &frames {
            io.write_all(frame).await.expect("writes");
        }
        assert!(
            io.inner.writes.is_empty(),
            "nothing goes out before the flush"
        );
        io.flush().await.expect("flushes");
        assert_eq!(
            io.inner.writes,
            vec![frames.concat()],
            "one write, in order"
        );
        assert_eq!(io.inner.flushes, 1);
        assert_eq!(
            io.unwritten.bytes.capacity(),
            0,
            "nothing held once written"
        );
    }

    #[tokio::test]
    async fn what_was_written_is_not_kept_while_more_is_gathered() {
        let mut io = BurstIo::new(Recorder::default());
        let piece = numbered(1000);
        io.write_all(&piece).await.expect("writes");
        // Part written, the rest pending (as when the socket takes only some), then more.
        io.unwritten.consume(600);
        io.write_all(&piece).await.expect("writes");
        assert_eq!(
            io.unwritten.bytes.len(),
            400 + 1000,
            "only what is pending is held"
        );
        io.flush().await.expect("flushes");
        assert_eq!(io.inner.writes, vec![[&piece[600..], &piece[..]].concat()]);
    }

    #[tokio::test]
    async fn writes_past_the_limit_go_out_without_waiting_for_a_flush() {
        let mut io = BurstIo::new(Recorder::default());
        let small = numbered(100);
        let large = numbered(WRITE_BURST_BYTES);
        io.write_all(&small).await.expect("writes");
        io.write_all(&large).await.expect("writes");
        assert_eq!(io.inner.writes, vec![small.clone(), large.clone()]);
        io.write_all(&small).await.expect("writes");
        io.shutdown().await.expect("shuts down");
        assert_eq!(io.inner.writes, vec![small.clone(), large, small]);
    }
}
