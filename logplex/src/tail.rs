//! Live readers of an app's stream (`manifold logs --tail`).
//!
//! Each tail owns a [`Bounded`] queue that `push` fills without waiting. A tail that falls
//! behind loses lines and, in their place, reads one Heroku L11 notice saying how many, then
//! carries on with the newest lines. The reader side is a hand-written single-consumer
//! channel (a mutex-guarded queue plus the reader's waker) so that the producer can decide,
//! under one lock, whether a line fits, whether a notice is due and whether the reader left.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures::Stream;

use crate::buffer::Bounded;
use crate::line::{Filter, LogLine};

/// What the plex and one [`Tail`] share.
#[derive(Debug)]
pub(crate) struct TailShared {
    filter: Filter,
    state: Mutex<TailState>,
}

#[derive(Debug)]
struct TailState {
    buffer: Bounded,
    waker: Option<Waker>,
    /// Set by the plex when the app is removed, or by the reader when it drops the tail.
    closed: bool,
}

/// What [`TailShared::offer`] did with a line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offered {
    /// Queued (or not wanted by this tail's filter).
    Kept,
    /// The tail's buffer was full; the line was counted as lost.
    Dropped,
    /// The reader went away; the plex should forget this tail.
    Gone,
}

impl TailShared {
    pub fn new(filter: Filter, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            filter,
            state: Mutex::new(TailState {
                buffer: Bounded::new(capacity),
                waker: None,
                closed: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, TailState> {
        // A panic while holding this lock leaves a queue that is still consistent (every
        // operation on it is a single push or pop), so a poisoned lock is safe to reuse.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `line` if the filter wants it, without ever waiting for the reader.
    pub fn offer(&self, line: &LogLine) -> Offered {
        let mut state = self.lock();
        // Checked before the filter so a tail whose reader left is forgotten on the next
        // push even if it would never match another line.
        if state.closed {
            return Offered::Gone;
        }
        if !self.filter.matches(line) {
            return Offered::Kept;
        }
        // The first line that fits after a loss is preceded by the L11 notice; the pair may
        // take the buffer one over its capacity, so the notice never costs another line.
        let overflow = state.buffer.take_overflow();
        let kept = match overflow {
            Some(overflow) => {
                state.buffer.push_notice(overflow.tail_notice());
                state.buffer.push_notice(line.clone());
                true
            }
            None => state.buffer.offer(line.clone()),
        };
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        if kept {
            Offered::Kept
        } else {
            Offered::Dropped
        }
    }

    /// Ends the tail: the reader gets what is already queued, then the end of the stream.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A live view of one app's stream: the lines pushed after it started that pass its filter.
///
/// Read it as a [`Stream`] or with [`Tail::next`]. It ends (yields `None`) when the app is
/// removed. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Tail {
    shared: Arc<TailShared>,
}

impl Tail {
    pub(crate) fn new(shared: Arc<TailShared>) -> Self {
        Self { shared }
    }

    /// The next line, waiting for one if none is queued; `None` once the app is removed.
    pub async fn next(&mut self) -> Option<LogLine> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for Tail {
    type Item = LogLine;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<LogLine>> {
        let mut state = self.shared.lock();
        if let Some(line) = state.buffer.pop() {
            return Poll::Ready(Some(line));
        }
        // Caught up after losing lines: say so now rather than on the next push, which may
        // never come.
        if let Some(overflow) = state.buffer.take_overflow() {
            return Poll::Ready(Some(overflow.tail_notice()));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        match &state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
    }
}
