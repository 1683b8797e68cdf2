//! The request-body tee: the client's body streams to the primary untouched while the
//! mirror keeps a reference to each chunk (`Bytes` clones, no copy), up to the body cap.
//!
//! The copies are sent when the body has ended, so a shadow never sees a half body: past the
//! cap the kept chunks are released and the copies are abandoned as `body_too_large`; a body
//! that errors or is dropped early abandons them as `body_incomplete`. Nothing here can delay,
//! fail or alter what the primary receives.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::{MirrorContext, MirrorRequest, Ticket};
use crate::telemetry::MirrorOutcome;

/// Copies waiting for the end of the body.
pub struct PendingMirror {
    pub ctx: MirrorContext,
    pub request: Arc<MirrorRequest>,
    pub tickets: Vec<Ticket>,
    /// The smallest body cap among the tickets' shadows.
    pub cap: u64,
}

struct Tee {
    pending: PendingMirror,
    chunks: Vec<Bytes>,
    len: u64,
}

pin_project! {
    /// The primary's request body, optionally teed to the mirrors.
    pub struct TeeBody<B> {
        #[pin]
        inner: B,
        tee: Option<Tee>,
    }
}

impl<B> TeeBody<B> {
    pub fn passthrough(inner: B) -> Self {
        TeeBody { inner, tee: None }
    }

    pub fn new(inner: B, pending: PendingMirror) -> Self {
        TeeBody {
            inner,
            tee: Some(Tee {
                pending,
                chunks: Vec::new(),
                len: 0,
            }),
        }
    }
}

impl Tee {
    fn push(mut self, data: &Bytes) -> Option<Tee> {
        self.len += data.len() as u64;
        if self.len > self.pending.cap {
            self.abandon(MirrorOutcome::body_too_large);
            return None;
        }
        self.chunks.push(data.clone());
        Some(self)
    }

    fn abandon(self, outcome: MirrorOutcome) {
        for t in self.pending.tickets {
            t.abandon(outcome);
        }
    }

    fn finish(self) {
        let body = match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.into_iter().next().unwrap_or_default(),
            _ => {
                let mut b = BytesMut::with_capacity(self.len as usize);
                for c in &self.chunks {
                    b.extend_from_slice(c);
                }
                b.freeze()
            }
        };
        let PendingMirror {
            ctx,
            request,
            tickets,
            ..
        } = self.pending;
        for t in tickets {
            t.fire(&ctx, request.clone(), body.clone());
        }
    }
}

impl<B> Body for TeeBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let polled = ready!(this.inner.as_mut().poll_frame(cx));
        if this.tee.is_none() {
            return Poll::Ready(polled);
        }
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    *this.tee = this.tee.take().and_then(|t| t.push(data));
                }
                // A body whose last data frame says "end" may not be polled again.
                if this.inner.is_end_stream() {
                    if let Some(t) = this.tee.take() {
                        t.finish();
                    }
                }
            }
            None => {
                if let Some(t) = this.tee.take() {
                    t.finish();
                }
            }
            Some(Err(_)) => {
                if let Some(t) = this.tee.take() {
                    t.abandon(MirrorOutcome::body_incomplete);
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
