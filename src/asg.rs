//! Applying `asg_policies`: what the policy file describes ([`desired`]), compared by the pure
//! diff in `vmfleet_scaler::asg` with what exists, through the provisioner's Auto Scaling and
//! CloudWatch driver.
//!
//! Every resource vmfleet creates is named `vmfleet-<install>-…`, and only names with that
//! prefix are ever updated or deleted: hand-made policies and alarms in the same account, and
//! another installation's, are left alone.

use std::collections::BTreeMap;

pub use vmfleet_provisioner::asg::{alarm_name, hook_name, policy_name, prefix, AlarmState, Aws, AwsError, Datum};
use vmfleet_scaler::asg::{diff, Change, Key, Kind, Spec};

use crate::policy::AsgPolicy;

/// The resources `policies` describe, by key.
pub fn desired(install: &str, policies: &[AsgPolicy]) -> BTreeMap<Key, Spec> {
    let mut out = BTreeMap::new();
    for a in policies {
        let key = |kind, name: String| Key { kind, asg: a.asg.clone(), name };
        for p in &a.step_scaling {
            let pname = policy_name(install, &p.name);
            let mut steps: Vec<(Option<f64>, Option<f64>, i64)> =
                p.steps.iter().map(|s| (s.lower, s.upper, s.adjustment)).collect();
            steps.sort_by(|x, y| x.0.unwrap_or(f64::NEG_INFINITY).total_cmp(&y.0.unwrap_or(f64::NEG_INFINITY)));
            out.insert(
                key(Kind::Policy, pname.clone()),
                Spec::Policy { adjustment_type: p.adjustment_type.clone(), steps, warmup: p.warmup.map(|w| w as i32) },
            );
            let al = &p.alarm;
            out.insert(
                key(Kind::Alarm, alarm_name(install, &a.asg, &p.name)),
                Spec::Alarm {
                    metric: al.metric.clone(),
                    namespace: al.namespace.clone(),
                    statistic: al.statistic.clone(),
                    period: al.period as i32,
                    threshold: al.threshold,
                    comparison: al.comparison.clone(),
                    evaluation_periods: al.evaluation_periods as i32,
                    dimensions: al.dimensions.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    policy: pname,
                },
            );
        }
        for s in &a.scheduled {
            out.insert(
                key(Kind::Scheduled, policy_name(install, &s.name)),
                Spec::Scheduled {
                    recurrence: s.cron.clone(),
                    timezone: s.timezone.clone(),
                    min: s.min.map(|v| v as i32),
                    max: s.max.map(|v| v as i32),
                    desired: s.desired.map(|v| v as i32),
                },
            );
        }
        if let Some(h) = &a.termination_hook {
            out.insert(
                key(Kind::Hook, hook_name(install)),
                Spec::Hook { heartbeat_timeout: h.heartbeat_timeout as i32, default_result: h.default_result.clone() },
            );
        }
    }
    out
}

/// The plan: what differs between `policies` and what exists.
///
/// # Errors
/// The failing AWS call.
pub async fn plan(aws: &Aws, install: &str, policies: &[AsgPolicy]) -> Result<Vec<Change>, AwsError> {
    let want = desired(install, policies);
    let have = aws.existing(install, policies.iter().map(|a| a.asg.clone())).await?;
    let pre = prefix(install);
    Ok(diff(&want, &have, |k| k.name.starts_with(&pre)))
}
