//! Prometheus instruments the actors record into. Each component owns its instruments (created
//! unregistered, so tests and several runtimes in one process never collide); the server
//! registers them in its registry with [`Instruments::collectors`].

use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};

/// Latency buckets in seconds, 250 µs to 30 s: in-process operations and store round trips.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0,
];

/// Buckets in seconds for model providers, 5 ms to 2 min.
pub const PROVIDER_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Rows per write-behind batch.
pub const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// A component whose instruments the server registers.
pub trait Instruments {
    fn collectors(&self) -> Vec<Box<dyn Collector>>;
}

// Metric names and help texts are static and valid, so construction cannot fail; a failure
// would be a programming error caught by any test that starts a runtime.
#[allow(clippy::expect_used)]
pub(crate) fn counter(name: &str, help: &str, labels: &[(&str, &str)]) -> IntCounter {
    IntCounter::with_opts(const_labels(Opts::new(name, help), labels)).expect("valid counter")
}

#[allow(clippy::expect_used)]
pub(crate) fn counter_vec(
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
    variable: &[&str],
) -> IntCounterVec {
    IntCounterVec::new(const_labels(Opts::new(name, help), labels), variable)
        .expect("valid counter vec")
}

#[allow(clippy::expect_used)]
pub(crate) fn histogram(
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
    buckets: &[f64],
) -> Histogram {
    let mut opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    for (k, v) in labels {
        opts = opts.const_label(*k, *v);
    }
    Histogram::with_opts(opts).expect("valid histogram")
}

#[allow(clippy::expect_used)]
pub(crate) fn histogram_vec(
    name: &str,
    help: &str,
    variable: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        variable,
    )
    .expect("valid histogram vec")
}

fn const_labels(mut opts: Opts, labels: &[(&str, &str)]) -> Opts {
    for (k, v) in labels {
        opts = opts.const_label(*k, *v);
    }
    opts
}

/// Boxes instruments for registration.
#[macro_export]
#[doc(hidden)]
macro_rules! collectors {
    ($($c:expr),* $(,)?) => {
        vec![$(Box::new($c.clone()) as Box<dyn prometheus::core::Collector>),*]
    };
}
