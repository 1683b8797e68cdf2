//! The request-body tee: the client's body streams to the primary untouched while the
//! mirror keeps a reference to each chunk (`Bytes` clones, no copy), up to the body cap.
//!
//! The copies are sent when the body has ended, as the same chunks (shared by every shadow,
//! never concatenated), so a shadow never sees a half body: past the
//! cap the kept chunks are released and the copies are abandoned as `body_too_large`; a body
//! that errors or is dropped early abandons them as `body_incomplete`. Nothing here can delay,
//! fail or alter what the primary receives.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::{MirrorContext, MirrorRequest, Ticket};
use crate::body::{Observed, Observer};
use crate::telemetry::MirrorOutcome;

/// Copies waiting for the end of the body.
pub struct PendingMirror {
    pub ctx: MirrorContext,
    pub request: Arc<MirrorRequest>,
    pub tickets: Vec<Ticket>,
    /// The smallest body cap among the tickets' shadows.
    pub cap: u64,
}

/// The tee's observer: keeps references to the chunks until the body ends.
pub struct Tee {
    pending: PendingMirror,
    chunks: Vec<Bytes>,
    len: u64,
}

/// The primary's request body, optionally teed to the mirrors.
pub type TeeBody<B> = Observed<B, Tee>;

impl Tee {
    pub fn new(pending: PendingMirror) -> Tee {
        Tee {
            pending,
            chunks: Vec::new(),
            len: 0,
        }
    }

    fn abandon(self, outcome: MirrorOutcome) {
        for t in self.pending.tickets {
            t.abandon(outcome);
        }
    }
}

impl Observer for Tee {
    fn data(&mut self, data: &Bytes) -> bool {
        self.len += data.len() as u64;
        if self.len > self.pending.cap {
            for t in std::mem::take(&mut self.pending.tickets) {
                t.abandon(MirrorOutcome::body_too_large);
            }
            self.chunks.clear();
            return false;
        }
        self.chunks.push(data.clone());
        true
    }

    fn end(self) {
        let body = MirrorBody::new(self.chunks);
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

    fn error(self) {
        self.abandon(MirrorOutcome::body_incomplete);
    }
}

/// A complete request body kept for the mirrors: the client's chunks, shared (not copied)
/// by every shadow it goes to.
#[derive(Debug, Clone, Default)]
pub struct MirrorBody {
    chunks: Arc<[Bytes]>,
    len: u64,
}

impl MirrorBody {
    pub fn new(chunks: Vec<Bytes>) -> MirrorBody {
        let len = chunks.iter().map(|c| c.len() as u64).sum();
        MirrorBody {
            chunks: chunks.into(),
            len,
        }
    }

    pub fn empty() -> MirrorBody {
        MirrorBody::default()
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A fresh reader over the chunks, for one shadow request.
    pub fn reader(&self) -> ChunksBody {
        ChunksBody {
            chunks: self.chunks.clone(),
            next: 0,
            remaining: self.len,
        }
    }
}

/// The body of one mirrored request: the chunks in order, with an exact length (so the shadow
/// gets a `content-length` even when the client sent chunked).
#[derive(Debug)]
pub struct ChunksBody {
    chunks: Arc<[Bytes]>,
    next: usize,
    remaining: u64,
}

impl Body for ChunksBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let Some(chunk) = self.chunks.get(self.next).cloned() else {
            return Poll::Ready(None);
        };
        self.next += 1;
        self.remaining -= chunk.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn chunks_body_replays_every_chunk_with_an_exact_length() {
        let b = MirrorBody::new(vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cde")]);
        let r = b.reader();
        assert_eq!(r.size_hint().exact(), Some(5));
        let all = r.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        assert_eq!(&all[..], b"abcde");
        // A second reader is independent.
        assert_eq!(
            b.reader()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default()
                .len(),
            5
        );
        assert!(MirrorBody::empty().reader().is_end_stream());
    }
}
