//! The writer's instruments for the operator surface.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};

/// What the operator surface reads: Prometheus instruments plus the live flags.
pub struct WriterStats {
    pub batches: IntCounter,
    pub rows: IntCounter,
    pub failed_batches: IntCounter,
    pub retries: IntCounter,
    /// Cluster mode: chat writes refused because their shard's lease had moved on.
    pub fenced_writes: IntCounter,
    /// Store calls that failed, by store (`metadata`, `messages`) and kind.
    pub store_errors: IntCounterVec,
    pub batch_rows: Histogram,
    pub flush_seconds: Histogram,
    /// Each store call of a batch attempt, by stage (`messages`, `metadata`, `deletes`).
    pub stage_seconds: HistogramVec,
    /// From a change's acknowledgement-ready enqueue to its batch's commit.
    pub lag_seconds: Histogram,
    /// A store is failing: the writer is retrying a batch that has not committed yet.
    pub stalled: AtomicBool,
    /// The largest lag since the operator surface last took it (microseconds).
    lag_max_micros: AtomicU64,
}

impl Default for WriterStats {
    fn default() -> Self {
        use crate::metrics::*;
        Self {
            batches: counter(
                "arbor_writer_batches_total",
                "Write-behind batches committed.",
                &[],
            ),
            rows: counter(
                "arbor_writer_rows_total",
                "Rows committed by the write-behind writer.",
                &[],
            ),
            failed_batches: counter(
                "arbor_writer_failed_batches_total",
                "Write-behind batches that failed for good (their chats were fenced and reloaded).",
                &[],
            ),
            retries: counter(
                "arbor_writer_retries_total",
                "Batch attempts retried because a store was unavailable.",
                &[],
            ),
            fenced_writes: counter(
                "arbor_writer_fenced_writes_total",
                "Chat writes the metadata store refused because their shard's lease had moved to another epoch (cluster mode); their clients got errors.",
                &[],
            ),
            store_errors: counter_vec(
                "arbor_writer_store_errors_total",
                "Failed store calls of the write-behind writer, by store (metadata, messages; batch when one database takes the whole batch) and error kind.",
                &[],
                &["store", "kind"],
            ),
            batch_rows: histogram(
                "arbor_writer_batch_rows",
                "Rows per committed write-behind batch.",
                &[],
                BATCH_BUCKETS,
            ),
            flush_seconds: histogram(
                "arbor_writer_flush_duration_seconds",
                "Time to commit one write-behind batch to the stores, retries included.",
                &[],
                LATENCY_BUCKETS,
            ),
            stage_seconds: histogram_vec(
                "arbor_writer_stage_duration_seconds",
                "Time of one store call of a write-behind batch, by stage (messages, metadata, deletes; batch when one database takes the whole batch).",
                &["stage"],
                LATENCY_BUCKETS,
            ),
            lag_seconds: histogram(
                "arbor_writer_commit_lag_seconds",
                "Time from a change entering the write-behind queue to its commit.",
                &[],
                LATENCY_BUCKETS,
            ),
            stalled: AtomicBool::new(false),
            lag_max_micros: AtomicU64::new(0),
        }
    }
}

impl WriterStats {
    /// The largest commit lag since the previous call.
    pub fn take_lag_max(&self) -> Duration {
        Duration::from_micros(self.lag_max_micros.swap(0, Ordering::Relaxed))
    }

    pub(super) fn committed(&self, lag: Duration) {
        self.lag_seconds.observe(lag.as_secs_f64());
        self.lag_max_micros
            .fetch_max(lag.as_micros() as u64, Ordering::Relaxed);
    }
}

impl crate::metrics::Instruments for WriterStats {
    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        crate::collectors![
            self.batches,
            self.rows,
            self.failed_batches,
            self.retries,
            self.fenced_writes,
            self.store_errors,
            self.batch_rows,
            self.flush_seconds,
            self.stage_seconds,
            self.lag_seconds,
        ]
    }
}
