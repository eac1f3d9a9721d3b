//! The simulated cloud: boot times, capacity errors, DLC volume times.

use std::time::Duration;

use rand::RngExt;

/// What the simulated cloud does.
#[derive(Debug, Clone, Copy)]
pub struct Cloud {
    boot_median_s: f64,
    boot_sigma: f64,
    capacity_errors: f64,
}

impl Cloud {
    /// Boot times log-normal with this median and p95; `capacity_errors` of launches hit an
    /// insufficient-capacity error first (each costs a 30 s retry, at most five).
    pub fn new(median: Duration, p95: Duration, capacity_errors: f64) -> Self {
        let m = median.as_secs_f64().max(1.0);
        let q = p95.as_secs_f64().max(m);
        Self { boot_median_s: m, boot_sigma: (q / m).ln() / 1.644_854, capacity_errors }
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
