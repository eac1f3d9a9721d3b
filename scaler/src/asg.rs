//! What `vmfleet policies apply` changes in AWS: a pure diff of the resources the policy file
//! describes against those that exist, by name. Only resources whose names carry the
//! installation's prefix are ever updated or deleted, so hand-made policies and alarms in the
//! same account are left alone.

use std::collections::BTreeMap;

/// Kind of AWS resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// An Auto Scaling step scaling policy.
    Policy,
    /// A CloudWatch metric alarm.
    Alarm,
    /// An Auto Scaling scheduled action.
    Scheduled,
    /// An Auto Scaling lifecycle hook.
    Hook,
}

impl Kind {
    /// For printing.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Policy => "scaling-policy",
            Kind::Alarm => "alarm",
            Kind::Scheduled => "scheduled-action",
            Kind::Hook => "lifecycle-hook",
        }
    }
}

/// A resource's identity: its kind, its group, and its name in AWS.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// Kind.
    pub kind: Kind,
    /// Auto Scaling group.
    pub asg: String,
    /// Name in AWS.
    pub name: String,
}

/// What a resource should look like; compared field by field.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    /// Step scaling policy.
    Policy {
        /// `ChangeInCapacity`, `PercentChangeInCapacity` or `ExactCapacity`.
        adjustment_type: String,
        /// (lower, upper, adjustment) per step, sorted by lower bound.
        steps: Vec<(Option<f64>, Option<f64>, i64)>,
        /// Estimated instance warmup, seconds.
        warmup: Option<i32>,
    },
    /// Metric alarm triggering a policy.
    Alarm {
        /// Metric name.
        metric: String,
        /// Namespace.
        namespace: String,
        /// Statistic (`Average`, `Maximum`, …).
        statistic: String,
        /// Period, seconds.
        period: i32,
        /// Threshold.
        threshold: f64,
        /// Comparison operator.
        comparison: String,
        /// Evaluation periods.
        evaluation_periods: i32,
        /// Dimensions, sorted.
        dimensions: Vec<(String, String)>,
        /// Name (in AWS) of the policy it triggers.
        policy: String,
    },
    /// Scheduled action.
    Scheduled {
        /// Cron recurrence.
        recurrence: String,
        /// Time zone.
        timezone: Option<String>,
        /// Minimum size.
        min: Option<i32>,
        /// Maximum size.
        max: Option<i32>,
        /// Desired capacity.
        desired: Option<i32>,
    },
    /// Termination lifecycle hook.
    Hook {
        /// Heartbeat timeout, seconds.
        heartbeat_timeout: i32,
        /// `CONTINUE` or `ABANDON`.
        default_result: String,
    },
}

/// What to do with one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// It does not exist: create it.
    Create,
    /// It differs: update it (the put calls replace it whole).
    Update,
    /// It is ours but no longer described: delete it.
    Delete,
    /// Nothing to do.
    Unchanged,
}

impl Action {
    /// For printing.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Unchanged => "unchanged",
        }
    }
}

/// One line of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The resource.
    pub key: Key,
    /// What to do.
    pub action: Action,
    /// Its desired shape, for create and update.
    pub spec: Option<Spec>,
}

/// The plan: every desired resource (created, updated or unchanged) and every existing one of
/// ours that is no longer desired (deleted). `ours` says whether an existing name belongs to
/// this installation. Upserts come in dependency order (policies before the alarms that
/// name them), deletions in reverse (alarms before their policies).
pub fn diff(desired: &BTreeMap<Key, Spec>, existing: &BTreeMap<Key, Spec>, ours: impl Fn(&Key) -> bool) -> Vec<Change> {
    let mut upserts: Vec<Change> = desired
        .iter()
        .map(|(k, want)| {
            let action = match existing.get(k) {
                None => Action::Create,
                Some(have) if have == want => Action::Unchanged,
                Some(_) => Action::Update,
            };
            Change { key: k.clone(), action, spec: Some(want.clone()) }
        })
        .collect();
    upserts.sort_by(|a, b| a.key.cmp(&b.key));
    let mut deletes: Vec<Change> = existing
        .keys()
        .filter(|k| !desired.contains_key(*k) && ours(k))
        .map(|k| Change { key: k.clone(), action: Action::Delete, spec: None })
        .collect();
    deletes.sort_by(|a, b| {
        let rank = |k: Kind| match k {
            Kind::Alarm => 0,
            Kind::Policy => 1,
            Kind::Scheduled => 2,
            Kind::Hook => 3,
        };
        rank(a.key.kind).cmp(&rank(b.key.kind)).then(a.key.cmp(&b.key))
    });
    upserts.extend(deletes);
    upserts
}

/// What to do for an instance waiting in `Terminating:Wait` on a group with vmfleet's
/// termination hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Its work is still running: keep it waiting (RecordLifecycleActionHeartbeat).
    Heartbeat,
    /// Nothing runs on it any more: let the termination go on (CompleteLifecycleAction CONTINUE).
    Continue,
}

/// The step for an instance: `busy` says whether vmfleet has work running on it (`None`:
/// vmfleet knows nothing of it, so nothing of ours runs there).
pub fn lifecycle_step(busy: Option<bool>) -> Lifecycle {
    match busy {
        Some(true) => Lifecycle::Heartbeat,
        Some(false) | None => Lifecycle::Continue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: Kind, name: &str) -> Key {
        Key { kind, asg: "g".into(), name: name.into() }
    }

    fn hook(t: i32) -> Spec {
        Spec::Hook { heartbeat_timeout: t, default_result: "CONTINUE".into() }
    }

    fn policy(adj: i64) -> Spec {
        Spec::Policy { adjustment_type: "ChangeInCapacity".into(), steps: vec![(Some(0.0), None, adj)], warmup: None }
    }

    #[test]
    fn creates_updates_deletes_and_leaves_the_rest() {
        let desired = BTreeMap::from([
            (key(Kind::Policy, "vmfleet-a"), policy(1)),
            (key(Kind::Policy, "vmfleet-b"), policy(2)),
            (key(Kind::Hook, "vmfleet-drain"), hook(600)),
        ]);
        let existing = BTreeMap::from([
            (key(Kind::Policy, "vmfleet-a"), policy(1)),
            (key(Kind::Hook, "vmfleet-drain"), hook(300)),
            (key(Kind::Policy, "vmfleet-old"), policy(1)),
            (key(Kind::Alarm, "vmfleet-old"), Spec::Hook { heartbeat_timeout: 0, default_result: String::new() }),
            (key(Kind::Policy, "hand-made"), policy(9)),
        ]);
        let plan: Vec<(String, &str)> = diff(&desired, &existing, |k| k.name.starts_with("vmfleet-"))
            .iter()
            .map(|c| (format!("{} {}", c.key.kind.as_str(), c.key.name), c.action.as_str()))
            .collect();
        assert_eq!(
            plan,
            [
                ("scaling-policy vmfleet-a".to_string(), "unchanged"),
                ("scaling-policy vmfleet-b".into(), "create"),
                ("lifecycle-hook vmfleet-drain".into(), "update"),
                ("alarm vmfleet-old".into(), "delete"),
                ("scaling-policy vmfleet-old".into(), "delete"),
            ]
        );
        let again = diff(&desired, &desired, |_| true);
        assert!(again.iter().all(|c| c.action == Action::Unchanged));
    }

    #[test]
    fn draining_instances_wait_while_their_work_runs() {
        assert_eq!(lifecycle_step(Some(true)), Lifecycle::Heartbeat);
        assert_eq!(lifecycle_step(Some(false)), Lifecycle::Continue);
        assert_eq!(lifecycle_step(None), Lifecycle::Continue);
    }
}
