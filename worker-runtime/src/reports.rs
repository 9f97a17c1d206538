//! Starts and results on their way to the API, in batches (`POST /workers/{id}/reports`):
//! whatever queued up while one batch was in flight goes in the next, so a busy worker
//! makes few requests and an idle one reports at once.

use std::sync::Arc;

use hodei_protocol::{FinishedAttempt, Outcome, Reports, ReportsReply, StartedAttempt, MAX_REPORTS};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::session::{Delivery, Session};

/// A start or a result on its way to the API. Results carry who waits for delivery.
#[derive(Debug)]
pub enum Report {
    Started(StartedAttempt),
    Finished(FinishedAttempt, oneshot::Sender<()>),
}

/// Most reports in one request.
pub const REPORT_BATCH: usize = 500;
// The API takes up to `MAX_REPORTS` of each kind.
const _: () = assert!(REPORT_BATCH <= MAX_REPORTS);

/// Where reports queue for the next batch.
#[derive(Debug)]
pub struct Reporter {
    queue: mpsc::UnboundedSender<Report>,
}

impl Reporter {
    /// A reporter, and the queue `report_loop` sends from.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Report>) {
        let (queue, queued) = mpsc::unbounded_channel();
        (Self { queue }, queued)
    }

    fn queue(&self, report: Report) {
        if self.queue.send(report).is_err() {
            eprintln!("hodei-worker: the report queue is closed; a report was lost");
        }
    }

    /// Queues an attempt's start.
    pub fn started(&self, job_id: Uuid, attempt: i32) {
        self.queue(Report::Started(StartedAttempt { job_id, attempt }));
    }

    /// Queues an attempt's result and waits until the API has taken it (or refused it).
    pub async fn finished(&self, result: FinishedAttempt) {
        let (delivered, taken) = oneshot::channel();
        self.queue(Report::Finished(result, delivered));
        let _ = taken.await;
    }
}

/// Sends starts and results in batches. Each batch is retried until the API takes it (or
/// refuses it for good).
pub async fn report_loop(session: Arc<Session>, mut queued: mpsc::UnboundedReceiver<Report>) {
    while let Some(first) = queued.recv().await {
        let mut batch = vec![first];
        while batch.len() < REPORT_BATCH {
            match queued.try_recv() {
                Ok(report) => batch.push(report),
                Err(_) => break,
            }
        }
        let mut reports = Reports::default();
        let mut waiting = Vec::new();
        for report in batch {
            match report {
                Report::Started(start) => reports.started.push(start),
                Report::Finished(result, delivered) => {
                    reports.finished.push(result);
                    waiting.push(delivered);
                }
            }
        }
        let count = reports.started.len() + reports.finished.len();
        match session.report::<_, ReportsReply>("reports", &reports).await {
            Delivery::Taken(reply) => {
                let stale = reply
                    .iter()
                    .flat_map(|reply| reply.started.iter().chain(&reply.finished))
                    .filter(|outcome| outcome.outcome == Outcome::Stale)
                    .count();
                if stale > 0 {
                    eprintln!("hodei-worker: the API refused {stale} report(s) as stale; dropping them");
                }
            }
            Delivery::Stale => eprintln!("hodei-worker: the API refused {count} report(s) as stale; dropping them"),
            Delivery::Refused(why) => {
                eprintln!("hodei-worker: the API refused {count} report(s) ({why}); dropping them")
            }
            Delivery::LeaseLost => {}
        }
        for delivered in waiting {
            let _ = delivered.send(());
        }
    }
}
