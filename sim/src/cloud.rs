//! The simulated cloud: boot times, capacity errors, DLC volume times.

use std::time::Duration;

use rand::RngExt;

/// What the simulated cloud does.
#[derive(Debug, Clone, Copy)]
pub struct Cloud {
    boot_median_s: f64,
    boot_sigma: f64,
    capacity_errors: f64,
    start_median_s: f64,
    start_sigma: f64,
    start_failures: f64,
    /// A stopped VM's root volume, USD an hour.
    stopped_usd_hour: f64,
}

/// How stopped VMs behave and what they cost. The defaults are assumptions, not
/// measurements (no EC2 account is reachable here): a start of a pre-initialized stopped
/// instance skips first-boot work and is taken as median 30 s, p95 60 s; 1% of starts fail
/// with insufficient capacity; the root volume is 100 GB of gp3 at $0.08 per GB-month
/// (us-east-1).
#[derive(Debug, Clone, Copy)]
pub struct StoppedModel {
    /// Median start of a stopped VM.
    pub start_median: Duration,
    /// p95 start.
    pub start_p95: Duration,
    /// Share of starts that fail (the VM is terminated and a fresh one launched).
    pub start_failures: f64,
    /// Root volume size, GB.
    pub volume_gb: f64,
    /// EBS price, USD per GB-month.
    pub usd_gb_month: f64,
}

impl Default for StoppedModel {
    fn default() -> Self {
        Self {
            start_median: Duration::from_secs(30),
            start_p95: Duration::from_secs(60),
            start_failures: 0.01,
            volume_gb: 100.0,
            usd_gb_month: 0.08,
        }
    }
}

fn sigma(median_s: f64, p95_s: f64) -> f64 {
    (p95_s.max(median_s) / median_s).ln() / 1.644_854
}

impl Cloud {
    /// Boot times log-normal with this median and p95; `capacity_errors` of launches hit an
    /// insufficient-capacity error first (each costs a 30 s retry, at most five).
    pub fn new(median: Duration, p95: Duration, capacity_errors: f64) -> Self {
        let m = median.as_secs_f64().max(1.0);
        let mut c = Self {
            boot_median_s: m,
            boot_sigma: sigma(m, p95.as_secs_f64()),
            capacity_errors,
            start_median_s: 0.0,
            start_sigma: 0.0,
            start_failures: 0.0,
            stopped_usd_hour: 0.0,
        };
        c.set_stopped(StoppedModel::default());
        c
    }

    /// The same cloud with this stopped-VM model.
    pub fn with_stopped(mut self, m: StoppedModel) -> Self {
        self.set_stopped(m);
        self
    }

    fn set_stopped(&mut self, m: StoppedModel) {
        self.start_median_s = m.start_median.as_secs_f64().max(0.1);
        self.start_sigma = sigma(self.start_median_s, m.start_p95.as_secs_f64());
        self.start_failures = m.start_failures.clamp(0.0, 1.0);
        // A month of 730 hours, as AWS prices it.
        self.stopped_usd_hour = m.volume_gb.max(0.0) * m.usd_gb_month.max(0.0) / 730.0;
    }

    /// A start of a stopped VM of `pool`, ms, or `None` when it fails (Windows 2.5x, GPU 1.5x,
    /// as boots).
    pub(crate) fn start_ms(&self, rng: &mut rand::rngs::StdRng, pool: &str) -> Option<i64> {
        let ms = lognormal_ms(rng, self.start_median_s * Self::factor(pool), self.start_sigma);
        (rng.random::<f64>() >= self.start_failures).then_some(ms)
    }

    /// What a stopped VM's volume costs, USD an hour.
    pub fn stopped_usd_hour(&self) -> f64 {
        self.stopped_usd_hour
    }

    fn factor(pool: &str) -> f64 {
        if pool.contains("windows") {
            2.5
        } else if pool.contains("gpu") {
            1.5
        } else {
            1.0
        }
    }

    /// A boot of a VM of `pool`, ms: Windows 2.5x, GPU 1.5x.
    pub(crate) fn boot_ms(&self, rng: &mut rand::rngs::StdRng, pool: &str) -> i64 {
        let mut ms = lognormal_ms(rng, self.boot_median_s * Self::factor(pool), self.boot_sigma);
        let mut tries = 0;
        while tries < 5 && rng.random::<f64>() < self.capacity_errors {
            ms += 30_000;
            tries += 1;
        }
        ms
    }

    /// The expected boot of a VM of `pool`, ms: the log-normal's mean and the expected capacity
    /// retries. What the clairvoyant bound pays per task.
    pub fn mean_boot_ms(&self, pool: &str) -> f64 {
        let lognormal = self.boot_median_s * Self::factor(pool) * (self.boot_sigma * self.boot_sigma / 2.0).exp();
        let p = self.capacity_errors.clamp(0.0, 1.0);
        let retries: f64 = (1..=5).map(|k| p.powi(k)).sum();
        (lognormal + 30.0 * retries) * 1000.0
    }
}

fn normal(rng: &mut rand::rngs::StdRng) -> f64 {
    // Box–Muller.
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A log-normal draw, ms.
pub(crate) fn lognormal_ms(rng: &mut rand::rngs::StdRng, median_s: f64, sigma: f64) -> i64 {
    (median_s * (sigma * normal(rng)).exp() * 1000.0) as i64
}
