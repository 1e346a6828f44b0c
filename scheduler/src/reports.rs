//! Agents' dyno reports, written in batches: what every agent reports in the same moment
//! goes to the store in one transaction (one commit) rather than one each.
//!
//! ```text
//! report ──queue──▶ writer: takes what is queued (up to MOST) ──▶ Store::report_dynos
//!   ◀── its own outcome ──────────────────────────────────────────┘
//! ```
//!
//! No report waits for a timer: the writer takes whatever queued while the last
//! transaction ran, so a lone report is written at once and a storm of them in few
//! commits. Each reporter still gets its own outcome; if a batch fails, its reports are
//! written one by one, so each gets its own error.

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};

use crate::model::DynoReport;
use crate::store::{Reported, Store, StoreError};

/// The most reports in one transaction.
const MOST: usize = 512;

/// A report waiting for the writer, with where its outcome goes.
type Queued = (
    String,
    DynoReport,
    oneshot::Sender<Result<Reported, StoreError>>,
);

/// The queue to the writer (started with the first report, on its runtime).
pub(crate) struct Reports {
    store: Arc<dyn Store>,
    queue: OnceLock<mpsc::UnboundedSender<Queued>>,
}

impl std::fmt::Debug for Reports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reports").finish_non_exhaustive()
    }
}

impl Reports {
    pub(crate) fn new(store: Arc<dyn Store>) -> Reports {
        Reports {
            store,
            queue: OnceLock::new(),
        }
    }

    /// Records `host`'s report (see [`Store::report_dyno`]), in the next batch.
    pub(crate) async fn report(
        &self,
        host: &str,
        report: &DynoReport,
    ) -> Result<Reported, StoreError> {
        let (tx, rx) = oneshot::channel();
        if self
            .queue()
            .send((host.to_owned(), report.clone(), tx))
            .is_ok()
        {
            if let Ok(outcome) = rx.await {
                return outcome;
            }
        }
        // The writer is gone (its runtime ended): write it here.
        self.store.report_dyno(host, report).await
    }

    /// Records many reports (a batch of `Hello`s' dynos) in the next batches at once,
    /// rather than one after another's commit; their outcomes in the order given.
    pub(crate) async fn report_all(
        &self,
        reports: &[(String, DynoReport)],
    ) -> Result<Vec<Reported>, StoreError> {
        let queue = self.queue();
        let mut outcomes = Vec::with_capacity(reports.len());
        for (host, report) in reports {
            let (tx, rx) = oneshot::channel();
            let _ = queue.send((host.clone(), report.clone(), tx));
            outcomes.push(rx);
        }
        let mut out = Vec::with_capacity(reports.len());
        for ((host, report), rx) in reports.iter().zip(outcomes) {
            out.push(match rx.await {
                Ok(outcome) => outcome?,
                // The writer is gone (its runtime ended): write it here.
                Err(_) => self.store.report_dyno(host, report).await?,
            });
        }
        Ok(out)
    }

    fn queue(&self) -> &mpsc::UnboundedSender<Queued> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(writer(self.store.clone(), rx));
            tx
        })
    }
}

/// Writes what is queued, a batch at a time, until every sender is gone.
async fn writer(store: Arc<dyn Store>, mut queue: mpsc::UnboundedReceiver<Queued>) {
    let mut batch: Vec<Queued> = Vec::new();
    while queue.recv_many(&mut batch, MOST).await > 0 {
        let reports: Vec<(String, DynoReport)> = batch
            .iter()
            .map(|(host, report, _)| (host.clone(), report.clone()))
            .collect();
        match store.report_dynos(&reports).await {
            Ok(outcomes) => {
                for ((_, _, tx), outcome) in batch.drain(..).zip(outcomes) {
                    let _ = tx.send(Ok(outcome));
                }
            }
            Err(_) => {
                for (host, report, tx) in batch.drain(..) {
                    let _ = tx.send(store.report_dyno(&host, &report).await);
                }
            }
        }
    }
}
