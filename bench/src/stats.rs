//! Latency samples and their quantiles.

use std::time::Duration;

#[derive(Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn push(&mut self, sample: Duration) {
        self.0.push(sample);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// How many samples exceed `bound`.
    pub fn count_over(&self, bound: Duration) -> usize {
        self.0.iter().filter(|sample| **sample > bound).count()
    }

    /// The `q` quantile (nearest rank) in milliseconds; 0 without samples.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        let Some(last) = sorted.len().checked_sub(1) else {
            return 0.0;
        };
        let rank = ((q * sorted.len() as f64).ceil() as usize).saturating_sub(1);
        sorted[rank.min(last)].as_secs_f64() * 1e3
    }
}
