//! What a scenario measures besides its own end: the scheduler's memory and CPU (sampled from
//! `/proc`), and the API's answer times for `ps` and `ps:scale` on a probe app, asked
//! continuously while the scenario runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::Api;
use crate::scheduler::Usage;

/// Samples the scheduler's `/proc` every half second while it lives (the pid may change: a
/// restart), keeping the peak RSS and the CPU time used since the sampler started.
#[derive(Debug, Default)]
pub struct Sampler {
    pub pid: Mutex<Option<u32>>,
    peak_rss: Mutex<u64>,
    /// Per pid: (first, last) CPU seconds seen.
    cpu: Mutex<HashMap<u32, (f64, f64)>>,
}

impl Sampler {
    pub fn sample(&self) {
        let Some(pid) = *self.pid.lock().unwrap_or_else(|e| e.into_inner()) else {
            return;
        };
        let Some(u) = Usage::of(pid) else { return };
        let mut peak = self.peak_rss.lock().unwrap_or_else(|e| e.into_inner());
        *peak = (*peak).max(u.rss_bytes);
        let mut cpu = self.cpu.lock().unwrap_or_else(|e| e.into_inner());
        cpu.entry(pid).or_insert((u.cpu_secs, u.cpu_secs)).1 = u.cpu_secs;
    }

    /// Starts counting afresh (a new scenario), from the process's current figures.
    pub fn reset(&self) {
        *self.peak_rss.lock().unwrap_or_else(|e| e.into_inner()) = 0;
        self.cpu.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.sample();
    }

    /// (peak RSS bytes, CPU seconds) since the last reset.
    pub fn figures(&self) -> (u64, f64) {
        self.sample();
        let peak = *self.peak_rss.lock().unwrap_or_else(|e| e.into_inner());
        let cpu = self.cpu.lock().unwrap_or_else(|e| e.into_inner());
        (peak, cpu.values().map(|(a, b)| b - a).sum())
    }

    pub fn run(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                self.sample();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    }
}

/// Answer times of `ps` and `ps:scale` asked one after the other on the probe app.
#[derive(Debug, Default)]
pub struct ProbeTimes {
    pub ps: Vec<Duration>,
    pub scale: Vec<Duration>,
    /// Requests that failed (e.g. while the scheduler restarts).
    pub errors: u64,
    /// The first failure's message.
    pub first_error: Option<String>,
}

impl ProbeTimes {
    fn failed(&mut self, err: anyhow::Error) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| format!("{err:#}"));
    }
}

/// Asks `ps` then `ps:scale web=1|2` on `app` every 200 ms until `stop` is set.
pub async fn probe(api: Api, app: String, stop: Arc<AtomicBool>) -> ProbeTimes {
    let mut times = ProbeTimes::default();
    let mut quantity = 1;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        match api.dynos(&app).await {
            Ok(_) => times.ps.push(t.elapsed()),
            Err(err) => times.failed(err),
        }
        quantity = 3 - quantity;
        let t = Instant::now();
        match api.scale(&app, quantity).await {
            Ok(()) => times.scale.push(t.elapsed()),
            Err(err) => times.failed(err),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    times
}

/// The `q` quantile of `times` in milliseconds (nearest rank), `None` when empty.
pub fn quantile_ms(times: &[Duration], q: f64) -> Option<f64> {
    if times.is_empty() {
        return None;
    }
    let mut sorted = times.to_vec();
    sorted.sort();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1].as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let times: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&times, 0.99), Some(99.0));
        assert_eq!(quantile_ms(&times, 0.5), Some(50.0));
        assert_eq!(quantile_ms(&[], 0.5), None);
    }
}
