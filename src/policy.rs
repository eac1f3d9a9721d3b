//! Scaling policies: YAML files in a directory (`policies_dir`), reloaded when they change.
//!
//! A file may carry `limits` (fleet-wide bounds), `pools` (one entry per executor, image and
//! resource class) and `asg_policies` (step scaling, alarms, scheduled actions and a
//! termination hook for existing Auto Scaling groups, applied with `vmfleet policies apply`).
//! Every file of the directory is read; they are checked together, and one bad file refuses
//! the whole set: the running policy stays, and the error names the file, the line and the key.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{from_yaml_str, Config, ConfigError, Limits, PoolConfig, StepConfig};
use crate::domain::pool_key;

/// One policy file as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyFile {
    /// Fleet-wide bounds; they override the configuration's.
    pub limits: Option<Limits>,
    /// Pools.
    pub pools: Vec<PoolConfig>,
    /// Auto Scaling groups to manage.
    pub asg_policies: Vec<AsgPolicy>,
}

/// What to manage on one existing Auto Scaling group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsgPolicy {
    /// The group's name.
    pub asg: String,
    /// Step scaling policies, each with the alarm that triggers it.
    #[serde(default)]
    pub step_scaling: Vec<AsgStepPolicy>,
    /// Scheduled actions.
    #[serde(default)]
    pub scheduled: Vec<AsgScheduled>,
    /// A termination lifecycle hook: instances wait in `Terminating:Wait` until their work ends.
    #[serde(default)]
    pub termination_hook: Option<HookConfig>,
}

/// A step scaling policy and its alarm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsgStepPolicy {
    /// Name (the AWS name is prefixed with `vmfleet-<install>-`).
    pub name: String,
    /// `ChangeInCapacity` (default), `PercentChangeInCapacity` or `ExactCapacity`.
    #[serde(default = "crate::config::default_adjustment_type")]
    pub adjustment_type: String,
    /// Steps.
    pub steps: Vec<StepConfig>,
    /// Estimated instance warmup, seconds.
    #[serde(default)]
    pub warmup: Option<u32>,
    /// The alarm that triggers it.
    pub alarm: AlarmConfig,
}

/// A CloudWatch metric alarm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmConfig {
    /// Metric name (vmfleet publishes `TasksWaiting`, `VmsIdle`, `VmsBusy`, `QueueTimeP95`).
    pub metric: String,
    /// Namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// `Average`, `Sum`, `Minimum`, `Maximum` or `SampleCount`.
    #[serde(default = "default_statistic")]
    pub statistic: String,
    /// Period in seconds: 10, 30 or a multiple of 60.
    pub period: u32,
    /// Threshold.
    pub threshold: f64,
    /// `GreaterThanThreshold`, `GreaterThanOrEqualToThreshold`, `LessThanThreshold` or
    /// `LessThanOrEqualToThreshold`.
    pub comparison: String,
    /// Periods the threshold must be breached for.
    #[serde(default = "one")]
    pub evaluation_periods: u32,
    /// Dimensions (for example `{Pool: machine/default/medium}`); none: the fleet-wide metric.
    #[serde(default)]
    pub dimensions: BTreeMap<String, String>,
}

fn default_namespace() -> String {
    "vmfleet".into()
}
fn default_statistic() -> String {
    "Average".into()
}
fn one() -> u32 {
    1
}

/// An Auto Scaling scheduled action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsgScheduled {
    /// Name (prefixed in AWS like policies).
    pub name: String,
    /// Five-field cron.
    pub cron: String,
    /// IANA time zone; AWS's default is UTC.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Minimum size.
    #[serde(default)]
    pub min: Option<u32>,
    /// Maximum size.
    #[serde(default)]
    pub max: Option<u32>,
    /// Desired capacity.
    #[serde(default)]
    pub desired: Option<u32>,
}

/// A termination lifecycle hook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// Seconds an instance may wait without a heartbeat (30 to 7200).
    pub heartbeat_timeout: u32,
    /// `CONTINUE` (default) or `ABANDON` when the timeout passes.
    #[serde(default = "default_result")]
    pub default_result: String,
}

fn default_result() -> String {
    "CONTINUE".into()
}

/// The policies in force: the configuration's pools and limits plus every policy file's.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    /// Pools, configuration first.
    pub pools: Vec<PoolConfig>,
    /// Fleet-wide bounds.
    pub limits: Limits,
    /// Auto Scaling groups to manage.
    pub asg: Vec<AsgPolicy>,
    /// Files read, in order.
    pub files: Vec<PathBuf>,
}

impl Policies {
    /// The configuration's own pools and limits, without files.
    pub fn from_config(config: &Config) -> Self {
        Self { pools: config.pools.clone(), limits: config.limits, asg: Vec::new(), files: Vec::new() }
    }

    /// The pool of a pool key.
    pub fn pool(&self, key: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| pool_key(p.executor.as_str(), &p.image, &p.resource_class) == key)
    }

    /// Reads every `*.yaml` / `*.yml` file of `dir` (sorted by name) on top of `config`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, line and key of the first problem.
    pub fn load_dir(dir: &Path, config: &Config) -> Result<Self, ConfigError> {
        let files = policy_files(dir)?;
        let mut texts = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f)
                .map_err(|e| ConfigError { origin: f.display().to_string(), message: e.to_string() })?;
            texts.push((f, text));
        }
        Self::from_texts(&texts, config)
    }

    /// Reads one file on top of `config` (what `vmfleet policies validate FILE` and `vmfleet
    /// simulate --policy` read).
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, line and key.
    pub fn load_file(path: &Path, config: &Config) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError { origin: path.display().to_string(), message: e.to_string() })?;
        Self::from_texts(&[(path.to_path_buf(), text)], config)
    }

    /// Parses and checks `(file, text)` pairs together.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, line and key.
    pub fn from_texts(texts: &[(PathBuf, String)], config: &Config) -> Result<Self, ConfigError> {
        let mut out = Self::from_config(config);
        let mut seen: HashMap<String, String> = config
            .pools
            .iter()
            .map(|p| (pool_key(p.executor.as_str(), &p.image, &p.resource_class), "the configuration".to_string()))
            .collect();
        let mut seen_asg: HashMap<String, String> = HashMap::new();
        let catalog = config.catalog();
        for (path, text) in texts {
            let origin = path.display().to_string();
            let body = if text.trim().is_empty() { "{}" } else { text.as_str() };
            let file: PolicyFile = from_yaml_str(body, &origin)?;
            let err = |path_keys: &[&str], key: String, message: String| ConfigError {
                origin: match line_of_path(text, path_keys) {
                    Some(l) => format!("{origin}:{l}"),
                    None => origin.clone(),
                },
                message: format!("{key}: {message}"),
            };
            if let Some(l) = file.limits {
                out.limits = Limits {
                    max_instances: l.max_instances.or(out.limits.max_instances),
                    max_volumes: l.max_volumes.or(out.limits.max_volumes),
                };
            }
            for (i, pool) in file.pools.iter().enumerate() {
                let idx = i.to_string();
                if let Err((key, _needle, message)) = config.check_pool(&format!("pools[{i}]"), pool, &catalog) {
                    // `pools[0].schedules[1].cron` → ["pools", "0", "schedules", "1"]
                    let segs = key_segments(&key);
                    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
                    return Err(err(&segs, key.clone(), message));
                }
                let k = pool_key(pool.executor.as_str(), &pool.image, &pool.resource_class);
                if let Some(other) = seen.insert(k.clone(), origin.clone()) {
                    return Err(err(
                        &["pools", &idx],
                        format!("pools[{i}]"),
                        format!("pool {k} is already defined in {other}"),
                    ));
                }
                out.pools.push(pool.clone());
            }
            for (i, a) in file.asg_policies.iter().enumerate() {
                if let Err((sub, message)) = check_asg(a) {
                    let mut segs = vec!["asg_policies".to_string(), i.to_string()];
                    segs.extend(key_segments(&sub));
                    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
                    return Err(err(&s, format!("asg_policies[{i}].{sub}"), message));
                }
                if let Some(other) = seen_asg.insert(a.asg.clone(), origin.clone()) {
                    return Err(err(
                        &["asg_policies", &i.to_string()],
                        format!("asg_policies[{i}].asg"),
                        format!("group {} is already described in {other}", a.asg),
                    ));
                }
                out.asg.push(a.clone());
            }
            out.files.push(path.clone());
        }
        if let (Some(max), true) = (out.limits.max_instances, !out.pools.is_empty()) {
            let warm: u32 = out.pools.iter().map(|p| p.min_idle).sum();
            if warm > max {
                let origin = texts.last().map(|(p, _)| p.display().to_string()).unwrap_or_default();
                return Err(ConfigError {
                    origin,
                    message: format!("limits.max_instances: {max} is below the pools' min_idle total of {warm}"),
                });
            }
        }
        Ok(out)
    }
}

/// The policy files of `dir`, sorted by name.
fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| ConfigError { origin: dir.display().to_string(), message: e.to_string() })?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// A fingerprint of the directory's policy files (names, sizes, modification times), to notice
/// changes cheaply.
pub fn fingerprint(dir: &Path) -> String {
    let Ok(files) = policy_files(dir) else { return String::new() };
    files
        .iter()
        .map(|f| {
            let m = std::fs::metadata(f).ok();
            let t =
                m.as_ref().and_then(|m| m.modified().ok()).and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            format!("{}:{}:{}", f.display(), m.map_or(0, |m| m.len()), t.map_or(0, |t| t.as_nanos()))
        })
        .collect::<Vec<_>>()
        .join("|")
}

const COMPARISONS: [&str; 4] =
    ["GreaterThanThreshold", "GreaterThanOrEqualToThreshold", "LessThanThreshold", "LessThanOrEqualToThreshold"];
const STATISTICS: [&str; 5] = ["Average", "Sum", "Minimum", "Maximum", "SampleCount"];

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 100 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Checks one group's entry: on failure the key below the entry and why.
fn check_asg(a: &AsgPolicy) -> Result<(), (String, String)> {
    let fail = |k: String, m: String| Err((k, m));
    if a.asg.is_empty() || a.asg.len() > 255 {
        return fail("asg".into(), "must name an Auto Scaling group".into());
    }
    let mut names = std::collections::HashSet::new();
    for (i, p) in a.step_scaling.iter().enumerate() {
        let k = |f: &str| format!("step_scaling[{i}].{f}");
        if !valid_name(&p.name) {
            return fail(k("name"), format!("{:?}: use 1 to 100 letters, digits, '-', '_' or '.'", p.name));
        }
        if !names.insert(p.name.clone()) {
            return fail(k("name"), format!("{} is used twice", p.name));
        }
        if vmfleet_scaler::step::AdjustmentType::parse(&p.adjustment_type).is_none() {
            return fail(
                k("adjustment_type"),
                format!("{:?}: use ChangeInCapacity, PercentChangeInCapacity or ExactCapacity", p.adjustment_type),
            );
        }
        if let Err(m) = vmfleet_scaler::step::validate_steps(&crate::config::steps(&p.steps)) {
            return fail(k("steps"), m);
        }
        let al = &p.alarm;
        if al.metric.is_empty() || al.namespace.is_empty() {
            return fail(k("alarm"), "metric and namespace must not be empty".into());
        }
        if !STATISTICS.contains(&al.statistic.as_str()) {
            return fail(k("alarm.statistic"), format!("{:?}: use one of {}", al.statistic, STATISTICS.join(", ")));
        }
        if !COMPARISONS.contains(&al.comparison.as_str()) {
            return fail(k("alarm.comparison"), format!("{:?}: use one of {}", al.comparison, COMPARISONS.join(", ")));
        }
        if !(al.period == 10 || al.period == 30 || (al.period >= 60 && al.period % 60 == 0)) {
            return fail(k("alarm.period"), format!("{} s: use 10, 30 or a multiple of 60", al.period));
        }
        if al.evaluation_periods == 0 {
            return fail(k("alarm.evaluation_periods"), "must be at least 1".into());
        }
    }
    let mut snames = std::collections::HashSet::new();
    for (i, s) in a.scheduled.iter().enumerate() {
        let k = |f: &str| format!("scheduled[{i}].{f}");
        if !valid_name(&s.name) {
            return fail(k("name"), format!("{:?}: use 1 to 100 letters, digits, '-', '_' or '.'", s.name));
        }
        if !snames.insert(s.name.clone()) {
            return fail(k("name"), format!("{} is used twice", s.name));
        }
        if let Err(m) = vmfleet_scaler::CronWindow::parse(&s.cron, s.timezone.as_deref().unwrap_or("UTC")) {
            return fail(k(if m.contains("time zone") { "timezone" } else { "cron" }), m);
        }
        if s.min.is_none() && s.max.is_none() && s.desired.is_none() {
            return fail(k("name"), "set at least one of min, max and desired".into());
        }
        if let (Some(min), Some(max)) = (s.min, s.max) {
            if min > max {
                return fail(k("min"), format!("{min} is above max {max}"));
            }
        }
        if let Some(d) = s.desired {
            if s.min.is_some_and(|m| d < m) || s.max.is_some_and(|m| d > m) {
                return fail(k("desired"), format!("{d} is outside min..max"));
            }
        }
    }
    if let Some(h) = &a.termination_hook {
        if !(30..=7200).contains(&h.heartbeat_timeout) {
            return fail(
                "termination_hook.heartbeat_timeout".into(),
                format!("{} s: use 30 to 7200", h.heartbeat_timeout),
            );
        }
        if h.default_result != "CONTINUE" && h.default_result != "ABANDON" {
            return fail(
                "termination_hook.default_result".into(),
                format!("{:?}: use CONTINUE or ABANDON", h.default_result),
            );
        }
    }
    Ok(())
}

/// `pools[0].schedules[1].cron` → `["pools", "0", "schedules", "1", "cron"]`.
fn key_segments(key: &str) -> Vec<String> {
    key.split(['.', '[', ']']).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// The line (1-based) of a key path in block-style YAML: map keys by name, list items by
/// index. Where the path leaves what the text spells out (flow style, defaults), the line of
/// the deepest part found.
pub fn line_of_path(text: &str, path: &[&str]) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let ind = |l: &str| l.len() - l.trim_start().len();
    let is_content = |l: &str| {
        let t = l.trim_start();
        !t.is_empty() && !t.starts_with('#')
    };
    let dash = |l: &str| l.trim_start().starts_with('-');
    // A key on a list item's line sits two columns after the dash.
    let key_ind = |l: &str| if l.trim_start().starts_with("- ") { ind(l) + 2 } else { ind(l) };
    let (mut start, mut end) = (0usize, lines.len());
    let mut found = None;
    for seg in path {
        let span: Vec<usize> = (start..end).filter(|&i| is_content(lines[i])).collect();
        let hit = if let Ok(n) = seg.parse::<usize>() {
            let dashes: Vec<usize> = span.iter().copied().filter(|&i| dash(lines[i])).collect();
            let level = dashes.iter().map(|&i| ind(lines[i])).min();
            dashes.into_iter().filter(|&i| Some(ind(lines[i])) == level).nth(n).map(|i| {
                let d = ind(lines[i]);
                let stop = span.iter().copied().find(|&j| j > i && ind(lines[j]) <= d).unwrap_or(end);
                // The item's own line holds its first key.
                (i, i, stop)
            })
        } else {
            let level = span.iter().map(|&i| key_ind(lines[i])).min();
            let wanted = format!("{seg}:");
            span.iter()
                .copied()
                .filter(|&i| Some(key_ind(lines[i])) == level)
                .find(|&i| {
                    let t = lines[i].trim_start();
                    t.strip_prefix("- ").unwrap_or(t).starts_with(&wanted)
                })
                .map(|i| {
                    let k = key_ind(lines[i]);
                    let stop = span
                        .iter()
                        .copied()
                        .find(|&j| j > i && (ind(lines[j]) < k || (ind(lines[j]) == k && !dash(lines[j]))))
                        .unwrap_or(end);
                    (i, i + 1, stop)
                })
        };
        let Some((line, s, e)) = hit else { break };
        found = Some(line + 1);
        start = s;
        end = e;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
limits:
  max_instances: 10
pools:
  - executor: machine
    min_idle: 1
  - executor: machine
    resource_class: large
    schedules:
      - cron: '* 8-17 * * 1-5'
        min_idle: 2
      - cron: bad
        min_idle: 3
asg_policies:
  - asg: g
    termination_hook: {heartbeat_timeout: 5}
";

    #[test]
    fn a_hostile_policy_file_is_refused_with_its_line_and_limit() {
        let deep = format!("pools: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
        let e = Policies::from_texts(&[("p.yaml".into(), deep)], &Config::default()).expect_err("deep");
        assert!(e.to_string().contains("p.yaml:1") && e.message.contains("deeper than 32 levels"), "{e}");
    }

    #[test]
    fn lines_of_key_paths() {
        assert_eq!(line_of_path(TEXT, &["limits", "max_instances"]), Some(2));
        assert_eq!(line_of_path(TEXT, &["pools", "0"]), Some(4));
        assert_eq!(line_of_path(TEXT, &["pools", "1", "resource_class"]), Some(7));
        assert_eq!(line_of_path(TEXT, &["pools", "1", "schedules", "1", "cron"]), Some(11));
        assert_eq!(line_of_path(TEXT, &["pools", "1", "schedules", "0", "min_idle"]), Some(10));
        assert_eq!(line_of_path(TEXT, &["asg_policies", "0", "termination_hook", "heartbeat_timeout"]), Some(15));
        assert_eq!(line_of_path(TEXT, &["pools", "0", "schedules"]), Some(4), "the deepest part found");
    }

    #[test]
    fn a_stopped_tier_is_checked_by_the_simulator_and_the_service_alike() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("stopped.yaml");
        let good = "pools:\n  - executor: machine\n    max_instances: 5\n    stopped: {min: 2, max: 4, forecast: {quantile: 1.0}}\n";
        std::fs::write(&file, good).expect("write");
        let config = Config::default();
        let p = Policies::load_file(&file, &config).expect("the simulator reads it");
        let st = p.pools[0].stopped.expect("stopped");
        assert_eq!((st.min, st.max), (2, Some(4)));
        let p = Policies::load_dir(dir.path(), &config).expect("the service reads it");
        assert_eq!(p.pools[0].stopped.map(|s| s.min), Some(2));
        for (bad, key) in [
            ("stopped: {min: 3, max: 2}", "stopped.max"),
            ("max_instances: 2\n    stopped: {min: 3}", "stopped.min"),
            ("stopped: {forecast: {quantile: 2}}", "stopped.forecast.quantile"),
            ("stopped: {mni: 1}", "mni"),
        ] {
            std::fs::write(&file, format!("pools:\n  - executor: machine\n    {bad}\n")).expect("write");
            let e = Policies::load_file(&file, &config).expect_err(bad);
            assert!(e.to_string().contains(key), "{bad}: {e}");
        }
    }
}
