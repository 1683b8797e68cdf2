//! A body that streams through untouched while an [`Observer`] sees each data chunk and learns
//! how the body ended. The mirror tee and the compare capture are both observers; the subtle
//! part — a body whose last data frame already says "end" may never be polled again — lives
//! here once.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// Sees a body go by. Dropped without `end` or `error` when the body is dropped early.
pub trait Observer {
    /// One data chunk; `false` stops observing (the observer is then dropped).
    fn data(&mut self, chunk: &Bytes) -> bool;
    /// The body ended normally.
    fn end(self);
    /// The body failed.
    fn error(self);
}

pin_project! {
    pub struct Observed<B, O> {
        #[pin]
        inner: B,
        observer: Option<O>,
    }
}

impl<B, O> Observed<B, O> {
    pub fn passthrough(inner: B) -> Self {
        Observed {
            inner,
            observer: None,
        }
    }

    pub fn new(inner: B, observer: O) -> Self {
        Observed {
            inner,
            observer: Some(observer),
        }
    }
}

impl<B, O> Body for Observed<B, O>
where
    B: Body<Data = Bytes>,
    O: Observer,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let polled = ready!(this.inner.as_mut().poll_frame(cx));
        if this.observer.is_none() {
            return Poll::Ready(polled);
        }
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if this.observer.as_mut().is_some_and(|o| !o.data(data)) {
                        *this.observer = None;
                    }
                }
                if this.inner.is_end_stream() {
                    if let Some(o) = this.observer.take() {
                        o.end();
                    }
                }
            }
            None => {
                if let Some(o) = this.observer.take() {
                    o.end();
                }
            }
            Some(Err(_)) => {
                if let Some(o) = this.observer.take() {
                    o.error();
                }
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client stopped sending its request body for longer than the body timeout.
#[derive(Debug, thiserror::Error)]
#[error("client body timeout: no request body data for {0:?}")]
pub struct BodyTimeout(pub std::time::Duration);

/// The client's request body went past the size limit.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// A timer for stalls: armed when something starts waiting (once per stall, not per poll),
/// forgotten when it makes progress. It exists only while something stalls: a stream that flows
/// costs nothing. The client body's idle timeout and the server's send timeout both use it.
pub(crate) struct Stall {
    idle: std::time::Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    // The timer counts the current stall (reset when there is progress, re-armed at the next).
    armed: bool,
}

impl Stall {
    pub(crate) fn new(idle: std::time::Duration) -> Stall {
        Stall {
            idle,
            timer: None,
            armed: false,
        }
    }

    pub(crate) fn idle(&self) -> std::time::Duration {
        self.idle
    }

    /// There was progress: the next wait starts a new stall.
    pub(crate) fn progressed(&mut self) {
        self.armed = false;
    }

    /// Waiting again: `Ready` once the current stall has lasted `idle`.
    pub(crate) fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let idle = self.idle;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        if !self.armed {
            // One allocation per stream at most: later stalls reuse the timer.
            timer.as_mut().reset(tokio::time::Instant::now() + idle);
            self.armed = true;
        }
        timer.as_mut().poll(cx)
    }
}

pin_project! {
    /// A client's request body, bounded: fails with [`BodyTimeout`] when no frame arrives for
    /// `idle`, and with [`BodyTooLarge`] once more than `max` bytes came. The timer exists only
    /// while the body is stalled: a body that flows costs nothing.
    pub struct ClientBody<B> {
        #[pin]
        inner: B,
        stall: Stall,
        // Bytes still allowed (u64::MAX: no limit).
        left: u64,
        max: u64,
    }
}

impl<B> ClientBody<B> {
    pub fn new(inner: B, idle: std::time::Duration, max: Option<u64>) -> Self {
        ClientBody {
            inner,
            stall: Stall::new(idle),
            left: max.unwrap_or(u64::MAX),
            max: max.unwrap_or(u64::MAX),
        }
    }
}

impl<B> Body for ClientBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                this.stall.progressed();
                if let Some(d) = f.data_ref() {
                    let n = d.len() as u64;
                    if n > *this.left {
                        *this.left = 0;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(*this.max)))));
                    }
                    *this.left -= n;
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(f) => {
                this.stall.progressed();
                Poll::Ready(f.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => match this.stall.poll_stalled(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(this.stall.idle()))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
