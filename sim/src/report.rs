//! What a run measured, how runs compare, and a picture of one.

/// One policy's run.
#[derive(Debug, Clone)]
pub struct Run {
    /// Policy name (`vmfleet:q=0.9`, `static:n=12`, …).
    pub name: String,
    /// Its family (`vmfleet`, `static`, …).
    pub family: &'static str,
    /// What it measured.
    pub outcome: Outcome,
}

/// Results of one run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Outcome {
    /// Tasks.
    pub tasks: u64,
    /// Queue time (submission to hand-over), seconds.
    pub p50_queue_s: f64,
    /// p95.
    pub p95_queue_s: f64,
    /// p99.
    pub p99_queue_s: f64,
    /// Longest.
    pub max_queue_s: f64,
    /// VM-hours with a task.
    pub busy_vm_hours: f64,
    /// VM-hours ready without one.
    pub idle_vm_hours: f64,
    /// VM-hours booting.
    pub booting_vm_hours: f64,
    /// All VM-hours.
    pub vm_hours: f64,
    /// (idle + booting) / busy.
    pub idle_overhead: f64,
    /// Stopped-VM hours (paid at their volume's price, not in `vm_hours`).
    pub stopped_vm_hours: f64,
    /// What the stopped VMs' volumes cost (in `cost`).
    pub stopped_cost: f64,
    /// Starts of stopped VMs that failed (each replaced by a fresh launch).
    pub start_failures: u64,
    /// At the hourly prices, stopped VMs' volumes included.
    pub cost: f64,
    /// Share of DLC tasks that found their project's volume.
    pub dlc_hit_rate: f64,
    /// Share of tasks that found a ready VM on arrival.
    pub warm_hit_rate: f64,
    /// The clairvoyant bound: every VM launched exactly one boot before its task arrives, so
    /// nothing queues and nothing idles; its VM-hours are each task's duration and one expected
    /// boot of its pool (DLC volume time left out, so the bound is, if anything, low).
    pub oracle_vm_hours: f64,
    /// The bound's cost at the same prices.
    pub oracle_cost: f64,
    /// `vm_hours` over the bound's.
    pub vm_hours_vs_oracle: f64,
    /// `cost` over the bound's.
    pub cost_vs_oracle: f64,
    /// Instances launched.
    pub launches: u64,
    /// Warm VMs replaced for age.
    pub cycles: u64,
    /// Idle VMs retired.
    pub terminations: u64,
    /// Per pool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pools: Option<std::collections::BTreeMap<String, Outcome>>,
}

pub(crate) fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// On-demand hourly prices in us-east-1 of the default instance types of the classes.
pub fn price_of(pool: &str, overrides: &[(String, f64)]) -> f64 {
    let class = pool.rsplit('/').next().unwrap_or_default();
    if let Some((_, p)) = overrides.iter().find(|(c, _)| c == class) {
        return *p;
    }
    match class {
        "medium" => 0.096,           // m5.large
        "large" => 0.192,            // m5.xlarge
        "windows.medium" => 0.188,   // m5.large, Windows
        "gpu.nvidia.small" => 0.526, // g4dn.xlarge
        _ => 0.096,
    }
}

/// Prices every pool of `o` at `prices` (`CLASS`, USD an hour) over the defaults.
pub fn reprice(o: &mut Outcome, prices: &[(String, f64)]) {
    let Some(pools) = o.pools.as_mut() else { return };
    let (mut cost, mut oracle) = (0.0, 0.0);
    for (key, p) in pools.iter_mut() {
        let price = price_of(key, prices);
        p.cost = p.vm_hours * price + p.stopped_cost;
        p.oracle_cost = p.oracle_vm_hours * price;
        p.cost_vs_oracle = ratio(p.cost, p.oracle_cost);
        cost += p.cost;
        oracle += p.oracle_cost;
    }
    o.cost = cost;
    o.oracle_cost = oracle;
    o.cost_vs_oracle = ratio(cost, oracle);
}

/// `a / b`, 0 where `b` is.
pub(crate) fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Points no other point beats on both cost and p95, cheapest first.
pub fn frontier<'a>(pts: &[&'a Run]) -> Vec<&'a Run> {
    let mut front: Vec<&Run> = pts
        .iter()
        .copied()
        .filter(|a| {
            !pts.iter().any(|b| {
                (b.outcome.cost <= a.outcome.cost && b.outcome.p95_queue_s < a.outcome.p95_queue_s)
                    || (b.outcome.cost < a.outcome.cost && b.outcome.p95_queue_s <= a.outcome.p95_queue_s)
            })
        })
        .collect();
    front.sort_by(|a, b| a.outcome.cost.total_cmp(&b.outcome.cost));
    front
}

/// Samples of the pool sizes over time, for `--plot`.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// (time ms, waiting, warm (idle + starting), busy), every 5 minutes.
    pub points: Vec<(i64, u32, u32, u32)>,
}

/// A line chart of waiting tasks, warm VMs and busy VMs over time.
pub fn plot_svg(s: &Series, title: &str) -> String {
    let (w, h, pad) = (1200.0, 400.0, 40.0);
    let Some(first) = s.points.first() else { return String::from("<svg xmlns=\"http://www.w3.org/2000/svg\"/>") };
    let t0 = first.0 as f64;
    let t1 = s.points.last().map_or(t0 + 1.0, |p| p.0 as f64).max(t0 + 1.0);
    let ymax = s.points.iter().map(|p| p.1.max(p.2).max(p.3)).max().unwrap_or(1).max(1) as f64;
    let x = |t: i64| pad + (t as f64 - t0) / (t1 - t0) * (w - 2.0 * pad);
    let y = |v: u32| h - pad - f64::from(v) / ymax * (h - 2.0 * pad);
    // Column 1: waiting, 2: warm, 3: busy.
    let line = |col: usize| {
        s.points
            .iter()
            .map(|p| {
                let v = match col {
                    1 => p.1,
                    2 => p.2,
                    _ => p.3,
                };
                format!("{:.1},{:.1}", x(p.0), y(v))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{pad}\" y=\"20\">{title}: busy (blue), warm (green), waiting for a VM (red); y max {ymax}</text>\n\
         <line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - pad,
        w - pad,
        h - pad
    );
    // One tick a day.
    let mut day = (t0 as i64).div_euclid(86_400_000) * 86_400_000 + 86_400_000;
    while (day as f64) < t1 {
        let d = chrono::DateTime::from_timestamp_millis(day).map(|d| d.format("%a %d").to_string()).unwrap_or_default();
        svg.push_str(&format!(
            "<line x1=\"{0:.1}\" y1=\"{1}\" x2=\"{0:.1}\" y2=\"{2}\" stroke=\"#ddd\"/><text x=\"{0:.1}\" y=\"{3}\">{d}</text>\n",
            x(day),
            pad,
            h - pad,
            h - pad + 15.0
        ));
        day += 86_400_000;
    }
    for (color, col) in [("#1f77b4", 3), ("#2ca02c", 2), ("#d62728", 1)] {
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1\" points=\"{}\"/>\n",
            line(col)
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frontier_keeps_only_undominated_points() {
        let run = |name: &str, cost: f64, p95: f64| Run {
            name: name.into(),
            family: "x",
            outcome: Outcome { cost, p95_queue_s: p95, ..Default::default() },
        };
        let pts = [run("a", 10.0, 100.0), run("b", 20.0, 50.0), run("c", 25.0, 60.0)];
        let refs: Vec<_> = pts.iter().collect();
        let f: Vec<&str> = frontier(&refs).iter().map(|p| p.name.as_str()).collect();
        assert_eq!(f, ["a", "b"]);
    }
}
