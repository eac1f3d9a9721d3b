//! Prometheus metrics: VM and task gauges read from the store at scrape time, and histograms of
//! assignment latency and provisioning duration kept in memory by this process.

use std::fmt::Write;
use std::sync::Mutex;

use crate::store::Counts;

/// A fixed-bucket histogram of seconds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<HistInner>,
}

#[derive(Debug, Default)]
struct HistInner {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// A histogram with the given upper bounds.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, inner: Mutex::new(HistInner { counts: vec![0; bounds.len()], ..Default::default() }) }
    }

    /// Records one observation.
    pub fn observe(&self, secs: f64) {
        let mut h = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (i, b) in self.bounds.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.render_series(out, name, labels);
    }

    fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let h = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&h.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", h.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", h.count);
    }
}

const ASSIGN_BOUNDS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];
const PROVISION_BOUNDS: &[f64] = &[1.0, 5.0, 10.0, 30.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0];

/// The process's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Task request to VM handed over.
    pub assignment_latency: Histogram,
    /// VM requested to ready.
    pub provisioning_duration: Histogram,
    /// Job task queued to its VM handed over, by pool.
    job_queue: Mutex<std::collections::BTreeMap<String, Histogram>>,
    /// Starts of stopped VMs the cloud had no capacity for.
    pub start_failures: Counter,
}

/// A monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(std::sync::atomic::AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            assignment_latency: Histogram::new(ASSIGN_BOUNDS),
            provisioning_duration: Histogram::new(PROVISION_BOUNDS),
            job_queue: Mutex::new(std::collections::BTreeMap::new()),
            start_failures: Counter::default(),
        }
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    /// Records how long a job task of `pool` waited from being queued to holding its VM.
    pub fn observe_job_queue(&self, pool: &str, secs: f64) {
        let mut m = self.job_queue.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(pool.to_string()).or_insert_with(|| Histogram::new(ASSIGN_BOUNDS)).observe(secs);
    }

    /// Renders everything in the Prometheus text format.
    pub fn render(
        &self,
        counts: &Counts,
        install_id: &str,
        provider: &str,
        calls: &std::collections::BTreeMap<&'static str, u64>,
    ) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP vmfleet_provider_calls_total Cloud API calls by operation.\n# TYPE vmfleet_provider_calls_total counter");
        for (op, n) in calls {
            let _ = writeln!(
                out,
                "vmfleet_provider_calls_total{{provider=\"{}\",operation=\"{}\"}} {n}",
                esc(provider),
                esc(op)
            );
        }
        let _ = writeln!(out, "# HELP vmfleet_info Installation.\n# TYPE vmfleet_info gauge");
        let _ = writeln!(out, "vmfleet_info{{install_id=\"{}\"}} 1", esc(install_id));
        let _ = writeln!(out, "# HELP vmfleet_vms Live VMs by pool and state.\n# TYPE vmfleet_vms gauge");
        for (pool, state, n) in &counts.vms {
            let _ = writeln!(out, "vmfleet_vms{{pool=\"{}\",state=\"{}\"}} {n}", esc(pool), esc(state));
        }
        let _ = writeln!(
            out,
            "# HELP vmfleet_tasks_waiting Tasks waiting for a VM, by pool.\n# TYPE vmfleet_tasks_waiting gauge"
        );
        for (pool, state, n) in &counts.tasks {
            if state == "waiting" {
                let _ = writeln!(out, "vmfleet_tasks_waiting{{pool=\"{}\"}} {n}", esc(pool));
            }
        }
        let _ = writeln!(
            out,
            "# HELP vmfleet_tasks_running Tasks holding a VM, by pool.\n# TYPE vmfleet_tasks_running gauge"
        );
        for (pool, state, n) in &counts.tasks {
            if state == "assigned" {
                let _ = writeln!(out, "vmfleet_tasks_running{{pool=\"{}\"}} {n}", esc(pool));
            }
        }
        let name = "vmfleet_stopped_start_failures_total";
        let _ = writeln!(
            out,
            "# HELP {name} Starts of stopped VMs without capacity (each fell back to a fresh launch).\n# TYPE {name} counter\n{name} {}",
            self.start_failures.get()
        );
        let _ = writeln!(out, "# HELP vmfleet_volumes DLC volumes by state.\n# TYPE vmfleet_volumes gauge");
        for (state, n) in &counts.volumes {
            let _ = writeln!(out, "vmfleet_volumes{{state=\"{}\"}} {n}", esc(state));
        }
        self.assignment_latency.render(
            &mut out,
            "vmfleet_assignment_latency_seconds",
            "Time from a task's request to its VM being handed over.",
            "",
        );
        self.provisioning_duration.render(
            &mut out,
            "vmfleet_provisioning_duration_seconds",
            "Time from a VM's request to it being ready.",
            "",
        );
        let name = "vmfleet_job_queue_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from a job task being queued to its VM being handed over, by pool.\n# TYPE {name} histogram"
        );
        for (pool, h) in self.job_queue.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            h.render_series(&mut out, name, &format!("pool=\"{}\"", esc(pool)));
        }
        out
    }
}
