//! A timeout on a reused timer.
//!
//! `tokio::time::timeout` makes a timer per call: registered in the runtime's timer wheel
//! when first polled, removed when dropped — ~800 instructions per proxied request, for a
//! timeout that almost never fires. Here the timers are kept per worker thread and reused:
//! moving a registered timer to a later deadline is one atomic store in tokio (the wheel
//! entry, reached at the old deadline, is re-filed then), and each request's deadline is
//! later than the one before it.
//!
//! Each worker thread runs one runtime for its whole life, so a spare timer never crosses
//! runtimes.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// Spare timers kept per thread at most.
const SPARE_MAX: usize = 256;

thread_local! {
    static SPARE: RefCell<Vec<Pin<Box<Sleep>>>> = const { RefCell::new(Vec::new()) };
}

/// The deadline passed first.
#[derive(Debug, PartialEq, Eq)]
pub struct Elapsed;

pin_project! {
    /// `fut`, or [`Elapsed`] once `until` passes; see [`timeout_at`].
    pub struct Timeout<F> {
        #[pin]
        fut: F,
        sleep: Option<Pin<Box<Sleep>>>,
        until: Instant,
    }

    impl<F> PinnedDrop for Timeout<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(sleep) = this.project().sleep.take() {
                give_back(sleep);
            }
        }
    }
}

/// Like `tokio::time::timeout_at`, on a reused timer taken only if `fut` is not ready at once.
pub fn timeout_at<F: Future>(until: Instant, fut: F) -> Timeout<F> {
    Timeout {
        fut,
        sleep: None,
        until,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        let until = *this.until;
        let sleep = this.sleep.get_or_insert_with(|| take(until));
        // Outside the task's budget: a future that used it up must not keep its deadline from
        // being checked (tokio's own `Timeout` does the same).
        match Pin::new(&mut tokio::task::coop::unconstrained(sleep.as_mut())).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn take(until: Instant) -> Pin<Box<Sleep>> {
    // The latest deadline not later than `until` (moving it is then a store), among the last
    // few: timeouts of different lengths (primary, shadow) share the spares, and each takes
    // back one of its own length.
    let spare = SPARE.with(|s| {
        let mut s = s.borrow_mut();
        let n = s.len();
        let i = (n.saturating_sub(8)..n)
            .filter(|&i| s[i].deadline() <= until)
            .max_by_key(|&i| s[i].deadline())?;
        Some(s.swap_remove(i))
    });
    match spare {
        Some(mut sleep) => {
            sleep.as_mut().reset(until);
            sleep
        }
        None => Box::pin(tokio::time::sleep_until(until)),
    }
}

fn give_back(mut sleep: Pin<Box<Sleep>>) {
    // The timer forgets the task it would wake (a spare must not keep a finished task alive).
    let _ = Pin::new(&mut tokio::task::coop::unconstrained(sleep.as_mut()))
        .poll(&mut Context::from_waker(Waker::noop()));
    let _ = SPARE.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < SPARE_MAX {
            s.push(sleep);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_reused_timer_still_fires_and_a_ready_future_needs_none() {
        let now = Instant::now();
        // Ready at once: no timer taken.
        assert_eq!(timeout_at(now, async { 7 }).await, Ok(7));
        // Pending past the deadline: elapsed, its timer goes back to the spares.
        let never = std::future::pending::<()>();
        assert_eq!(
            timeout_at(now + Duration::from_millis(10), never).await,
            Err(Elapsed)
        );
        assert_eq!(SPARE.with(|s| s.borrow().len()), 1);
        // The spare is reused, moved later, and fires at its new deadline, not the old one.
        let start = Instant::now();
        let slow = tokio::time::sleep(Duration::from_millis(50));
        let r = timeout_at(start + Duration::from_millis(30), slow).await;
        assert_eq!(r, Err(Elapsed));
        assert_eq!(Instant::now() - start, Duration::from_millis(30));
        // A future that finishes first wins, and its timer is kept for the next.
        let r = timeout_at(
            Instant::now() + Duration::from_secs(30),
            tokio::time::sleep(Duration::from_millis(5)),
        )
        .await;
        assert_eq!(r, Ok(()));
        assert_eq!(SPARE.with(|s| s.borrow().len()), 1);
    }
}
