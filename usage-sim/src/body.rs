//! The simulator's response body: whole (every ordinary answer), trickled, or cut short.
//!
//! Guarantees: `size_hint` is exact and equals the `Content-Length` the response announces
//! (hyper checks this in debug builds). A whole body is one frame, like `Full`. A trickled body
//! sends its chunks in order with `pause` before each chunk after the first. A cut body sends
//! the first half of its bytes, waits until hyper has flushed them to the socket, and then
//! either ends early (hyper then drops the connection: a FIN after fewer bytes than announced)
//! or fails (hyper aborts the connection; with `reset_tcp` the close is a TCP reset).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::Sleep;

use crate::conn::Conn;

/// Why a cut body failed (hyper logs it; the client sees only the aborted connection).
#[derive(Debug, thiserror::Error)]
#[error("usage-sim aborts this answer mid-body (misbehavior reset_mid_body)")]
pub(crate) struct AbortedMidBody;

/// How a cut body ends after its first half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// End the body early; hyper closes the connection normally.
    Close,
    /// Fail the body; hyper aborts the connection, with a TCP reset if `reset_tcp`.
    Abort { reset_tcp: bool },
}

/// A response body (see the module docs).
#[derive(Debug)]
pub(crate) struct Body(Kind);

#[derive(Debug)]
enum Kind {
    Whole(Option<Bytes>),
    Trickle {
        chunks: VecDeque<Bytes>,
        /// Bytes not yet sent.
        left: u64,
        pause: Duration,
        /// The pause before the next chunk, once started.
        sleep: Option<Pin<Box<Sleep>>>,
        started: bool,
    },
    Cut {
        /// The first half, until it is sent.
        half: Option<Bytes>,
        /// Bytes announced and not yet sent.
        left: u64,
        ending: Ending,
        conn: Arc<Conn>,
        /// Flush mark taken when the half was handed to hyper.
        mark: Option<u64>,
        done: bool,
    },
}

impl Body {
    /// The whole answer in one frame.
    pub fn whole(bytes: Bytes) -> Body {
        Body(Kind::Whole((!bytes.is_empty()).then_some(bytes)))
    }

    /// `bytes` in `chunks` near-equal pieces, with `pause` before each piece after the first.
    pub fn trickle(bytes: Bytes, chunks: usize, pause: Duration) -> Body {
        let len = bytes.len();
        let chunks = chunks.max(1);
        let pieces = (0..chunks)
            .map(|i| bytes.slice(len * i / chunks..len * (i + 1) / chunks))
            .collect();
        Body(Kind::Trickle {
            chunks: pieces,
            left: len as u64,
            pause,
            sleep: None,
            started: false,
        })
    }

    /// Announces all of `bytes`, sends the first half (rounded down), then ends as `ending` says.
    pub fn cut(bytes: Bytes, ending: Ending, conn: Arc<Conn>) -> Body {
        let left = bytes.len() as u64;
        let half = bytes.slice(..bytes.len() / 2);
        Body(Kind::Cut {
            half: Some(half),
            left,
            ending,
            conn,
            mark: None,
            done: false,
        })
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = AbortedMidBody;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, AbortedMidBody>>> {
        match &mut self.get_mut().0 {
            Kind::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Trickle {
                chunks,
                left,
                pause,
                sleep,
                started,
            } => {
                if chunks.is_empty() {
                    return Poll::Ready(None);
                }
                if *started {
                    let s = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(*pause)));
                    if s.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    *sleep = None;
                }
                *started = true;
                let chunk = chunks.pop_front().unwrap_or_default();
                *left -= chunk.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Kind::Cut {
                half,
                left,
                ending,
                conn,
                mark,
                done,
            } => {
                if *done {
                    return Poll::Ready(None);
                }
                if let Some(bytes) = half.take() {
                    *mark = Some(conn.flush_mark());
                    *left -= bytes.len() as u64;
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                if conn.poll_flushed_since(mark.unwrap_or(0), cx).is_pending() {
                    return Poll::Pending;
                }
                *done = true;
                match *ending {
                    Ending::Close => Poll::Ready(None),
                    Ending::Abort { reset_tcp } => {
                        if reset_tcp {
                            conn.reset_on_close();
                        }
                        Poll::Ready(Some(Err(AbortedMidBody)))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Whole(bytes) => bytes.is_none(),
            Kind::Trickle { chunks, .. } => chunks.is_empty(),
            // Never: hyper must keep polling to reach the early end or the failure.
            Kind::Cut { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Whole(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Kind::Trickle { left, .. } | Kind::Cut { left, .. } => SizeHint::with_exact(*left),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_whole_body_is_one_frame_of_exact_size() {
        let body = Body::whole(Bytes::from_static(b"{\"a\":1}"));
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(7));
        let collected = body.collect().await.expect("infallible").to_bytes();
        assert_eq!(&collected[..], b"{\"a\":1}");
        assert!(http_body::Body::is_end_stream(&Body::whole(Bytes::new())));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_body_pauses_before_each_chunk_after_the_first() {
        let bytes = Bytes::from_static(b"0123456789abcdefghij-");
        let mut body = Body::trickle(bytes.clone(), 10, Duration::from_millis(100));
        let start = tokio::time::Instant::now();
        let mut out = Vec::new();
        let mut at = Vec::new();
        while let Some(frame) = body.frame().await {
            out.extend_from_slice(&frame.expect("infallible").into_data().expect("data"));
            at.push(start.elapsed().as_millis());
        }
        assert_eq!(out, bytes);
        assert_eq!(at, (0..10).map(|i| i * 100).collect::<Vec<u128>>());
    }

    #[tokio::test]
    async fn a_cut_body_announces_everything_and_sends_half_before_its_ending() {
        let conn = Arc::new(Conn::default());
        let mut body = Body::cut(
            Bytes::from_static(b"0123456789"),
            Ending::Close,
            Arc::clone(&conn),
        );
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(10));
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().ok(), Some(Bytes::from_static(b"01234")));
        let flusher = {
            let conn = Arc::clone(&conn);
            tokio::spawn(async move { conn.flushed() })
        };
        assert!(body.frame().await.is_none());
        flusher.await.expect("flusher ran");
        assert!(!conn.resets_on_close());
    }

    #[tokio::test]
    async fn an_aborting_cut_body_fails_after_the_flush_and_marks_the_connection() {
        let conn = Arc::new(Conn::default());
        let ending = Ending::Abort { reset_tcp: true };
        let mut body = Body::cut(Bytes::from_static(b"0123456789"), ending, Arc::clone(&conn));
        assert!(body.frame().await.expect("a frame").is_ok());
        conn.flushed();
        assert!(body.frame().await.expect("a frame").is_err());
        assert!(conn.resets_on_close());
    }
}
