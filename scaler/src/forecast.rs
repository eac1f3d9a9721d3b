//! Demand forecast for warm-pool sizing: how many tasks a pool should expect to arrive within
//! the next boot window. CI arrivals come in bursts (a build's parallel tasks and matrix jobs
//! arrive together), so the forecast is a quantile of what arrived in windows of that length,
//! not a mean: windows around the same time of day on each of the previous seven days (the
//! daily and weekly pattern), and windows of the last half hour (what is happening now). The
//! warm target is that quantile, because a task that finds no warm VM waits a whole boot.
//!
//! Pure: the caller records arrivals with their times and asks with the time.

use std::collections::VecDeque;

/// Arrivals of one pool, counted per minute, for the last eight days.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Start (ms) of the minute `counts[0]` covers.
    origin_min: i64,
    counts: VecDeque<u32>,
}

const MINUTE: i64 = 60_000;
const DAY_MIN: i64 = 24 * 60;
const KEEP_MIN: usize = 8 * DAY_MIN as usize + 60;

impl History {
    /// Counts an arrival at `t_ms`.
    pub fn record(&mut self, t_ms: i64) {
        let m = t_ms.div_euclid(MINUTE);
        if self.counts.is_empty() {
            self.origin_min = m;
        }
        if m < self.origin_min {
            return;
        }
        let idx = (m - self.origin_min) as usize;
        while self.counts.len() <= idx {
            self.counts.push_back(0);
        }
        self.counts[idx] += 1;
        while self.counts.len() > KEEP_MIN {
            self.counts.pop_front();
            self.origin_min += 1;
        }
    }

    /// Arrivals in the minutes `[from, to)` (minute numbers); `None` for a window that ends
    /// before anything was recorded (nothing is known of it).
    fn sum(&self, from: i64, to: i64) -> Option<u32> {
        if self.counts.is_empty() || to <= self.origin_min {
            return None;
        }
        let end = self.origin_min + self.counts.len() as i64;
        let a = (from.max(self.origin_min) - self.origin_min) as usize;
        let b = (to.min(end) - self.origin_min).max(0) as usize;
        Some(self.counts.range(a.min(b)..b).sum())
    }
}

/// How the forecast is turned into a warm target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Forecast {
    /// The window ahead to cover: about the p95 boot time.
    pub horizon_ms: i64,
    /// Which quantile of the windows' arrivals to keep warm (0.9: nine windows in ten are
    /// covered).
    pub quantile: f64,
    /// Weight of the last half hour against the same time on earlier days.
    pub recent_weight: f64,
}

impl Default for Forecast {
    fn default() -> Self {
        Self { horizon_ms: 180_000, quantile: 0.9, recent_weight: 0.5 }
    }
}

fn quantile(mut v: Vec<u32>, q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let rank = ((v.len() as f64) * q.clamp(0.0, 1.0)).ceil() as usize;
    Some(f64::from(v[rank.clamp(1, v.len()) - 1]))
}

impl Forecast {
    /// Arrivals per window of the horizon's length: around this time of day on each of the
    /// previous seven days (±30 min), and over the last half hour.
    fn samples(&self, h: &History, now_ms: i64) -> (Vec<u32>, Vec<u32>) {
        let now_min = now_ms.div_euclid(MINUTE);
        let span = (self.horizon_ms / MINUTE).max(1);
        let mut seasonal = Vec::new();
        for d in 1..=7 {
            let mut off = -30;
            while off <= 30 {
                let from = now_min - d * DAY_MIN + off;
                if let Some(n) = h.sum(from, from + span) {
                    seasonal.push(n);
                }
                off += span;
            }
        }
        let mut recent = Vec::new();
        let mut from = now_min - 30;
        while from + span <= now_min {
            if let Some(n) = h.sum(from, from + span) {
                recent.push(n);
            }
            from += span;
        }
        (seasonal, recent)
    }

    /// The warm target: the blended quantile of arrivals per window, rounded up.
    pub fn target(&self, h: &History, now_ms: i64) -> u32 {
        let (seasonal, recent) = self.samples(h, now_ms);
        let s = quantile(seasonal, self.quantile);
        let r = quantile(recent, self.quantile);
        let v = match (s, r) {
            (Some(s), Some(r)) => self.recent_weight * r + (1.0 - self.recent_weight) * s,
            (Some(x), None) | (None, Some(x)) => x,
            (None, None) => 0.0,
        };
        v.ceil() as u32
    }
}

/// Forecast targets of a set of pools, computed at most once a minute: a target depends only
/// on whole minutes, so one computation serves every pass of that minute. The service and the
/// simulator both keep one.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    minute: Option<i64>,
    forecasts: Vec<(String, Forecast)>,
    targets: std::collections::HashMap<String, u32>,
}

impl Targets {
    /// Whether the targets must be recomputed for `forecasts` (pool, forecast) at `now_ms`.
    pub fn stale(&self, forecasts: &[(String, Forecast)], now_ms: i64) -> bool {
        self.minute != Some(now_ms.div_euclid(60_000)) || self.forecasts != forecasts
    }

    /// Recomputes the targets from each pool's history (a pool without one targets 0).
    pub fn refresh<'a>(
        &mut self,
        forecasts: Vec<(String, Forecast)>,
        history: impl Fn(&str) -> Option<&'a History>,
        now_ms: i64,
    ) {
        self.targets =
            forecasts.iter().map(|(k, f)| (k.clone(), history(k).map_or(0, |h| f.target(h, now_ms)))).collect();
        self.minute = Some(now_ms.div_euclid(60_000));
        self.forecasts = forecasts;
    }

    /// A pool's forecast target, if it has a forecast.
    pub fn get(&self, pool: &str) -> Option<u32> {
        self.targets.get(pool).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_set_the_target_through_the_quantile() {
        let mut h = History::default();
        let day = DAY_MIN * MINUTE;
        // Yesterday around 10:00, one 3-minute window had a burst of 30; the others had 3.
        let yesterday = day + 10 * 3_600_000;
        for w in -10..=10i64 {
            let n = if w == 0 { 30 } else { 3 };
            for i in 0..n {
                h.record(yesterday + w * 3 * MINUTE + i);
            }
        }
        let now = 2 * day + 10 * 3_600_000;
        let median = Forecast { horizon_ms: 3 * MINUTE, quantile: 0.5, recent_weight: 0.5 };
        // Nothing arrived in the last half hour: half of the seasonal median 3, rounded up.
        assert_eq!(median.target(&h, now), 2);
        let top = Forecast { quantile: 1.0, ..median };
        assert_eq!(top.target(&h, now), 15, "half of the burst of 30");
        let seasonal_only = Forecast { recent_weight: 0.0, ..top };
        assert_eq!(seasonal_only.target(&h, now), 30, "the burst");
        // The last half hour: 6 per window; blended half and half with the seasonal median.
        for w in 1..=10i64 {
            for i in 0..6 {
                h.record(now - w * 3 * MINUTE + i);
            }
        }
        assert_eq!(median.target(&h, now), 5, "(6 + 3) / 2, rounded up");
    }

    #[test]
    fn nothing_known_means_nothing_warm() {
        assert_eq!(Forecast::default().target(&History::default(), 1_000_000), 0);
    }

    #[test]
    fn history_keeps_eight_days() {
        let mut h = History::default();
        for d in 0..12 {
            h.record(d * DAY_MIN * MINUTE);
        }
        assert!(h.counts.len() <= KEEP_MIN);
        assert_eq!(h.sum(0, 1), None, "forgotten");
    }
}
