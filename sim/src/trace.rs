//! CI traces: one row per task (the format of the shared traces' README).

use std::collections::HashMap;
use std::path::Path;

/// One task of a trace.
#[derive(Debug, Clone, Copy)]
pub struct Task {
    /// Submitted, ms since the epoch.
    pub at: i64,
    /// Project index.
    pub project: u32,
    /// Pool index into [`Trace::pools`].
    pub pool: usize,
    /// Wants its project's DLC volume.
    pub dlc: bool,
    /// Run time, ms.
    pub dur: i64,
}

/// A parsed trace, tasks in submission order.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Tasks.
    pub tasks: Vec<Task>,
    /// Pool keys, by index.
    pub pools: Vec<String>,
    /// Distinct projects.
    pub projects: usize,
}

/// Why a trace was refused: the file, line and field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TraceError(String);

fn pool_of(executor: &str, class: &str) -> String {
    let image = match (executor, class) {
        ("remote-docker", _) => "docker-default",
        (_, c) if c.starts_with("windows.") => "windows-default",
        (_, c) if c.starts_with("gpu.") => "gpu-default",
        _ => "default",
    };
    vmfleet_scaler::pool_key(executor, image, class)
}

/// Reads a trace file.
///
/// # Errors
/// [`TraceError`] naming the file, line and column of the first bad field.
pub fn load_trace(path: &Path) -> Result<Trace, TraceError> {
    let text = std::fs::read_to_string(path).map_err(|e| TraceError(format!("reading {}: {e}", path.display())))?;
    parse_trace(&text, &path.display().to_string())
}

/// Parses a trace; `origin` names it in errors.
///
/// # Errors
/// [`TraceError`] naming the line and column of the first bad field.
pub fn parse_trace(text: &str, origin: &str) -> Result<Trace, TraceError> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |name: &str| {
        header.iter().position(|h| *h == name).ok_or_else(|| TraceError(format!("{origin}:1: no column {name}")))
    };
    let (c_at, c_proj, c_exec, c_class, c_dlc, c_dur) = (
        col("submitted_at")?,
        col("project")?,
        col("executor")?,
        col("resource_class")?,
        col("docker_layer_caching")?,
        col("duration_s")?,
    );
    let mut pools: Vec<String> = Vec::new();
    let mut projects: HashMap<String, u32> = HashMap::new();
    let mut tasks = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let bad = |what: String| TraceError(format!("{origin}:{}: {what}", i + 2));
        let get = |c: usize, name: &str| f.get(c).copied().ok_or_else(|| bad(format!("no {name}")));
        let at = chrono::DateTime::parse_from_rfc3339(get(c_at, "submitted_at")?)
            .map_err(|e| bad(format!("submitted_at: {e}")))?
            .timestamp_millis();
        let dur: f64 = get(c_dur, "duration_s")?.parse().map_err(|e| bad(format!("duration_s: {e}")))?;
        if !dur.is_finite() {
            return Err(bad("duration_s is not a finite number".into()));
        }
        let dlc = match get(c_dlc, "docker_layer_caching")? {
            "true" => true,
            "false" => false,
            other => return Err(bad(format!("docker_layer_caching {other:?} is neither true nor false"))),
        };
        let key = pool_of(get(c_exec, "executor")?, get(c_class, "resource_class")?);
        let pool = match pools.iter().position(|p| *p == key) {
            Some(p) => p,
            None => {
                pools.push(key);
                pools.len() - 1
            }
        };
        let n = projects.len() as u32;
        let project = *projects.entry(get(c_proj, "project")?.to_string()).or_insert(n);
        tasks.push(Task { at, project, pool, dlc, dur: (dur * 1000.0).max(0.0) as i64 });
    }
    if tasks.is_empty() {
        return Err(TraceError(format!("{origin}: no tasks")));
    }
    tasks.sort_by_key(|t| t.at);
    Ok(Trace { tasks, pools, projects: projects.len() })
}

/// How bursty a trace is: tasks that arrive in the same second of the same pool.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Bursts {
    /// Tasks per burst, mean.
    pub mean: f64,
    /// Tasks per burst that 99% of the tasks arrived in a burst no larger than.
    pub p99_task: u32,
    /// The largest burst.
    pub max: u32,
}

impl Trace {
    /// The same tasks with every arrival moved down to a multiple of `window_ms`: the work is
    /// unchanged, and tasks that arrived within one window arrive as one burst.
    pub fn regrouped(&self, window_ms: i64) -> Trace {
        let w = window_ms.max(1);
        let tasks = self.tasks.iter().map(|t| Task { at: t.at.div_euclid(w) * w, ..*t }).collect();
        Trace { tasks, ..self.clone() }
    }

    /// The same tasks with each arrival moved later by a stable pseudo-random share of
    /// `window_ms` (its index hashed with `seed`): bursts are spread out over the window.
    pub fn spread(&self, window_ms: i64, seed: u64) -> Trace {
        let w = window_ms.max(1) as u64;
        let mut tasks: Vec<Task> = self
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                // SplitMix64 of (seed, index): stable across runs and platforms.
                let mut z = seed.wrapping_add((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                Task { at: t.at + ((z ^ (z >> 31)) % w) as i64, ..*t }
            })
            .collect();
        tasks.sort_by_key(|t| t.at);
        Trace { tasks, ..self.clone() }
    }

    /// Its bursts: tasks of one pool arriving in the same second.
    pub fn bursts(&self) -> Bursts {
        let mut sizes: HashMap<(usize, i64), u32> = HashMap::new();
        for t in &self.tasks {
            *sizes.entry((t.pool, t.at.div_euclid(1000))).or_default() += 1;
        }
        let mut v: Vec<u32> = sizes.into_values().collect();
        v.sort_unstable();
        let tasks: u64 = v.iter().map(|&n| u64::from(n)).sum();
        // The burst size at the 99th percentile of tasks (weighted by size, as a task sees it).
        let (mut seen, mut p99_task) = (0u64, 0);
        for &n in &v {
            seen += u64::from(n);
            p99_task = n;
            if seen * 100 >= tasks * 99 {
                break;
            }
        }
        Bursts { mean: tasks as f64 / v.len().max(1) as f64, p99_task, max: v.last().copied().unwrap_or(0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regrouping_merges_bursts_and_spreading_splits_them_keeping_the_work() {
        let text = "submitted_at,project,executor,resource_class,docker_layer_caching,duration_s\n\
            2019-10-07T00:00:00Z,a,machine,medium,false,60\n\
            2019-10-07T00:00:00Z,b,machine,medium,false,60\n\
            2019-10-07T00:00:20Z,a,machine,medium,false,60\n\
            2019-10-07T00:00:59Z,a,machine,medium,false,60\n";
        let t = parse_trace(text, "t").expect("trace");
        assert_eq!(t.bursts(), Bursts { mean: 4.0 / 3.0, p99_task: 2, max: 2 });
        let g = t.regrouped(60_000);
        assert_eq!(g.bursts(), Bursts { mean: 4.0, p99_task: 4, max: 4 });
        let s = t.spread(30_000, 7);
        let work = |x: &Trace| x.tasks.iter().map(|t| t.dur).sum::<i64>();
        assert_eq!((work(&g), work(&s)), (work(&t), work(&t)), "the same work");
        assert!(s.tasks.windows(2).all(|w| w[0].at <= w[1].at), "still in arrival order");
        let (first, last) = (t.tasks[0].at, t.tasks[3].at);
        assert!(s.tasks.iter().all(|x| x.at >= first && x.at < last + 30_000), "moved later, within the window");
        assert!(s.bursts().max <= 2);
        let again: Vec<i64> = t.spread(30_000, 7).tasks.iter().map(|x| x.at).collect();
        assert_eq!(again, s.tasks.iter().map(|x| x.at).collect::<Vec<_>>(), "stable for a seed");
    }

    #[test]
    fn the_shared_week_trace_loads_and_bad_rows_name_their_line() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces/travis-2019-10-07-week.csv");
        let t = load_trace(&path).expect("trace");
        assert_eq!(t.tasks.len(), 29_202, "the README's count");
        assert_eq!(t.pools.len(), 5);
        assert!(t.pools.contains(&"machine/windows-default/windows.medium".to_string()));
        assert!(t.tasks.windows(2).all(|w| w[0].at <= w[1].at));
        let err = parse_trace(
            "submitted_at,project,executor,resource_class,docker_layer_caching,duration_s\n\
             2019-10-07T00:01:21Z,a/b,machine,medium,false,10\n2019-10-07T00:01:22Z,a/b,machine,medium,maybe,10\n",
            "bad.csv",
        )
        .expect_err("bad")
        .to_string();
        assert!(err.contains("bad.csv:3") && err.contains("docker_layer_caching"), "{err}");
    }
}
