//! Admitting agents' `Hello`s in batches: after a scheduler restart or a failover every
//! agent dials at once, and each `Hello` alone (its host stored, its dynos' reports, what
//! ended while the link was down, its assignments read and sent) meant some ten store
//! transactions; a thousand of them queued on the store's few connections and none
//! finished in two minutes (BENCHMARKS.md, "The restart herd").
//!
//! ```text
//! Hello ──queue──▶ waiting ──the next turn takes up to MOST──▶ Core::admit (one batch:
//!   ◀── its own link serial, or error ──────────────────────────┘  one write per step)
//! ```
//!
//! As with [`crate::reports`], no `Hello` waits for a timer: a turn takes whatever queued
//! while the last batch was admitted, so a lone agent is admitted at once and a herd in a
//! few batches. Each `Hello` starts a turn of its own in a task of its own, so an agent that
//! hangs up while its batch is admitted cancels nothing of the others'.

use std::sync::Mutex;

use manifold_proto::Hello;
use tokio::sync::oneshot;

use crate::cluster::LinkSender;
use crate::model::DynoReport;
use crate::store::StoreError;
use crate::sync::lock;

/// The most `Hello`s admitted in one batch: a batch's store writes are one transaction
/// each, and its assignments one read; this keeps each transaction's length bounded.
const MOST: usize = 256;

/// One agent's `Hello`, waiting for its turn.
#[derive(Debug)]
pub(crate) struct Waiting {
    pub(crate) hello: Hello,
    pub(crate) reports: Vec<DynoReport>,
    pub(crate) tx: LinkSender,
    /// Where the link's serial (or the error that refused it) goes.
    pub(crate) done: oneshot::Sender<Result<u64, StoreError>>,
}

/// The `Hello`s waiting, and the turn to admit them (one batch at a time).
#[derive(Debug, Default)]
pub(crate) struct Admissions {
    waiting: Mutex<Vec<Waiting>>,
    turn: tokio::sync::Mutex<()>,
}

impl Admissions {
    /// Queues a `Hello`; its outcome comes on its `done` channel.
    pub(crate) fn queue(&self, waiting: Waiting) {
        lock(&self.waiting).push(waiting);
    }

    /// Waits for the turn and takes what is queued then (up to [`MOST`]), to admit it
    /// before the turn (the returned guard) is dropped. Empty when an earlier turn took it.
    pub(crate) async fn take(&self) -> (tokio::sync::MutexGuard<'_, ()>, Vec<Waiting>) {
        let turn = self.turn.lock().await;
        let mut waiting = lock(&self.waiting);
        let n = waiting.len().min(MOST);
        let batch = waiting.drain(..n).collect();
        (turn, batch)
    }
}
