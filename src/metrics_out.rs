//! Publishing per-pool numbers (tasks waiting, idle and busy VMs, the warm target, queue-time
//! p95) to CloudWatch and DogStatsD. The numbers are computed once per publication from the
//! store; formatting is pure and tested here.

use std::collections::BTreeMap;

use vmfleet_provisioner::asg::Datum;

/// One pool's numbers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolStats {
    /// Tasks waiting for a VM (queued or with one starting).
    pub waiting: u32,
    /// Ready, unassigned VMs.
    pub idle: u32,
    /// VMs with a task.
    pub busy: u32,
    /// The warm target now.
    pub target: u32,
    /// 95th percentile of request-to-assignment, seconds, over the last period; `None` when no
    /// task was assigned in it.
    pub queue_p95_s: Option<f64>,
}

/// The 95th percentile (nearest rank) of `values`.
pub fn p95(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((values.len() as f64) * 0.95).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

/// CloudWatch values: per pool (dimension `Pool`) and fleet-wide (no dimension), so an alarm
/// may watch either.
pub fn cloudwatch_data(pools: &BTreeMap<String, PoolStats>, fleet_p95: Option<f64>) -> Vec<Datum> {
    let mut out = Vec::new();
    let mut total = PoolStats::default();
    for (pool, s) in pools {
        let dims = vec![("Pool", pool.clone())];
        out.push(Datum { name: "TasksWaiting", dimensions: dims.clone(), value: f64::from(s.waiting), seconds: false });
        out.push(Datum { name: "VmsIdle", dimensions: dims.clone(), value: f64::from(s.idle), seconds: false });
        out.push(Datum { name: "VmsBusy", dimensions: dims.clone(), value: f64::from(s.busy), seconds: false });
        out.push(Datum { name: "WarmTarget", dimensions: dims.clone(), value: f64::from(s.target), seconds: false });
        if let Some(p) = s.queue_p95_s {
            out.push(Datum { name: "QueueTimeP95", dimensions: dims, value: p, seconds: true });
        }
        total.waiting += s.waiting;
        total.idle += s.idle;
        total.busy += s.busy;
        total.target += s.target;
    }
    out.push(Datum { name: "TasksWaiting", dimensions: vec![], value: f64::from(total.waiting), seconds: false });
    out.push(Datum { name: "VmsIdle", dimensions: vec![], value: f64::from(total.idle), seconds: false });
    out.push(Datum { name: "VmsBusy", dimensions: vec![], value: f64::from(total.busy), seconds: false });
    out.push(Datum { name: "WarmTarget", dimensions: vec![], value: f64::from(total.target), seconds: false });
    if let Some(p) = fleet_p95 {
        out.push(Datum { name: "QueueTimeP95", dimensions: vec![], value: p, seconds: true });
    }
    out
}

/// DogStatsD gauges, named after the operations guide's `circle.*` metrics
/// (`circle.run-queue.latency` is its "how long a runnable build waits to be accepted").
pub fn dogstatsd_lines(prefix: &str, extra_tags: &[String], pools: &BTreeMap<String, PoolStats>) -> Vec<String> {
    let mut out = Vec::new();
    for (pool, s) in pools {
        let mut tags = vec![format!("pool:{pool}")];
        tags.extend(extra_tags.iter().cloned());
        let tags = tags.join(",");
        let mut g = |name: &str, v: f64| out.push(format!("{prefix}.{name}:{v}|g|#{tags}"));
        g("vm-service.tasks.waiting", f64::from(s.waiting));
        g("vm-service.vms.idle", f64::from(s.idle));
        g("vm-service.vms.busy", f64::from(s.busy));
        g("vm-service.vms.target", f64::from(s.target));
        if let Some(p) = s.queue_p95_s {
            g("run-queue.latency", p);
        }
    }
    out
}

/// Lines joined into datagrams of at most `max` bytes (a line longer than that goes alone).
pub fn datagrams(lines: &[String], max: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in lines {
        match out.last_mut() {
            Some(d) if d.len() + 1 + l.len() <= max => {
                d.push('\n');
                d.push_str(l);
            }
            _ => out.push(l.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> BTreeMap<String, PoolStats> {
        BTreeMap::from([(
            "machine/default/medium".to_string(),
            PoolStats { waiting: 3, idle: 2, busy: 5, target: 4, queue_p95_s: Some(0.75) },
        )])
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(p95(&mut v), Some(95.0));
        assert_eq!(p95(&mut [3.0]), Some(3.0));
        assert_eq!(p95(&mut []), None);
    }

    #[test]
    fn dogstatsd_names_and_tags() {
        let lines = dogstatsd_lines("circle", &["env:test".into()], &stats());
        assert!(
            lines.contains(&"circle.vm-service.tasks.waiting:3|g|#pool:machine/default/medium,env:test".to_string())
        );
        assert!(lines.contains(&"circle.run-queue.latency:0.75|g|#pool:machine/default/medium,env:test".to_string()));
        let grams = datagrams(&lines, 120);
        assert!(grams.iter().all(|g| g.len() <= 120 || !g.contains('\n')));
        assert_eq!(grams.iter().map(|g| g.lines().count()).sum::<usize>(), lines.len());
    }

    #[test]
    fn cloudwatch_has_pool_and_fleet_values() {
        let d = cloudwatch_data(&stats(), Some(0.75));
        let waiting: Vec<_> = d.iter().filter(|x| x.name == "TasksWaiting").collect();
        assert_eq!(waiting.len(), 2, "per pool and fleet-wide");
        assert!(waiting.iter().any(|x| x.dimensions.is_empty() && x.value == 3.0));
        assert!(d.iter().any(|x| x.name == "QueueTimeP95" && x.seconds));
    }
}
