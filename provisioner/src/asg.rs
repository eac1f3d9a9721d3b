//! The AWS Auto Scaling and CloudWatch driver: reading what exists of an installation's
//! scaling policies, alarms, scheduled actions and lifecycle hooks, carrying out the changes
//! the pure diff in `vmfleet_scaler::asg` chose, reading the alarms that drive pools, and
//! publishing the fleet's metrics.
//!
//! Every resource vmfleet creates is named `vmfleet-<install>-…`, and only names with that
//! prefix are ever updated or deleted: hand-made policies and alarms in the same account, and
//! another installation's, are left alone.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_autoscaling::types::StepAdjustment;
use aws_sdk_cloudwatch::types::{ComparisonOperator, Dimension, MetricDatum, StandardUnit, StateValue, Statistic};
use vmfleet_scaler::asg::{Action, Change, Key, Kind, Spec};

use crate::ec2::{sdk_config, Ec2Settings};

/// Auto Scaling and CloudWatch clients on the provider's region, endpoint and credentials.
#[derive(Debug, Clone)]
pub struct Aws {
    asg: aws_sdk_autoscaling::Client,
    cw: aws_sdk_cloudwatch::Client,
}

/// An AWS call that failed, with what was being done; never carries credentials.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct AwsError {
    what: String,
    message: String,
}

fn aws_err<E: std::fmt::Debug + std::fmt::Display>(
    what: impl Into<String>,
) -> impl FnOnce(aws_sdk_autoscaling::error::SdkError<E>) -> AwsError {
    let what = what.into();
    move |e| {
        let message = match &e {
            aws_sdk_autoscaling::error::SdkError::ServiceError(s) => format!("{}", s.err()),
            other => format!("{other}"),
        };
        AwsError { what, message }
    }
}

/// The name prefix of this installation's resources.
pub fn prefix(install: &str) -> String {
    format!("vmfleet-{install}-")
}

/// A resource name of this installation.
pub fn policy_name(install: &str, name: &str) -> String {
    format!("{}{name}", prefix(install))
}

/// A resource name of this installation.
pub fn alarm_name(install: &str, asg: &str, policy: &str) -> String {
    format!("{}{asg}-{policy}", prefix(install))
}

/// A resource name of this installation.
pub fn hook_name(install: &str) -> String {
    format!("{}drain", prefix(install))
}

/// `…:autoScalingGroupName/G:policyName/P` → (G, P).
fn parse_policy_arn(arn: &str) -> Option<(String, String)> {
    let (_, rest) = arn.split_once("autoScalingGroupName/")?;
    let (group, policy) = rest.split_once(":policyName/")?;
    Some((group.to_string(), policy.to_string()))
}

/// A CloudWatch alarm's state, as step scaling reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmState {
    /// `ALARM`, `OK` or `INSUFFICIENT_DATA`.
    pub state: String,
    /// The most recent datapoint, from the state reason data.
    pub value: Option<f64>,
    /// The alarm's threshold.
    pub threshold: f64,
}

/// One value to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Datum {
    /// Metric name.
    pub name: &'static str,
    /// Dimensions; none for fleet-wide values.
    pub dimensions: Vec<(&'static str, String)>,
    /// Value.
    pub value: f64,
    /// Unit: `Count` or `Seconds`.
    pub seconds: bool,
}

impl Aws {
    /// Clients for the configured region and endpoint.
    pub async fn new(settings: &Ec2Settings) -> Self {
        let sdk = sdk_config(settings).await;
        Self { asg: aws_sdk_autoscaling::Client::new(&sdk), cw: aws_sdk_cloudwatch::Client::new(&sdk) }
    }

    /// The Auto Scaling client, for tests and tools.
    pub fn autoscaling(&self) -> &aws_sdk_autoscaling::Client {
        &self.asg
    }

    /// The CloudWatch client, for tests and tools.
    pub fn cloudwatch(&self) -> &aws_sdk_cloudwatch::Client {
        &self.cw
    }

    /// This installation's resources as they exist: on `groups` and on any group that still
    /// carries one of ours.
    ///
    /// # Errors
    /// The failing AWS call.
    pub async fn existing(
        &self,
        install: &str,
        groups: impl IntoIterator<Item = String>,
    ) -> Result<BTreeMap<Key, Spec>, AwsError> {
        let pre = prefix(install);
        let mut out = BTreeMap::new();
        let mut groups: BTreeSet<String> = groups.into_iter().collect();

        let mut token = None;
        loop {
            let page = self
                .asg
                .describe_policies()
                .set_next_token(token)
                .send()
                .await
                .map_err(aws_err("describing scaling policies"))?;
            for p in page.scaling_policies() {
                let (Some(name), Some(group)) = (p.policy_name(), p.auto_scaling_group_name()) else { continue };
                if !name.starts_with(&pre) {
                    continue;
                }
                groups.insert(group.to_string());
                let mut steps: Vec<(Option<f64>, Option<f64>, i64)> = p
                    .step_adjustments()
                    .iter()
                    .map(|s| {
                        (
                            s.metric_interval_lower_bound(),
                            s.metric_interval_upper_bound(),
                            i64::from(s.scaling_adjustment().unwrap_or_default()),
                        )
                    })
                    .collect();
                steps.sort_by(|x, y| x.0.unwrap_or(f64::NEG_INFINITY).total_cmp(&y.0.unwrap_or(f64::NEG_INFINITY)));
                out.insert(
                    Key { kind: Kind::Policy, asg: group.to_string(), name: name.to_string() },
                    Spec::Policy {
                        adjustment_type: p.adjustment_type().unwrap_or_default().to_string(),
                        steps,
                        warmup: p.estimated_instance_warmup(),
                    },
                );
            }
            token = page.next_token().map(String::from);
            if token.is_none() {
                break;
            }
        }

        let mut token = None;
        loop {
            let page = self
                .asg
                .describe_scheduled_actions()
                .set_next_token(token)
                .send()
                .await
                .map_err(aws_err("describing scheduled actions"))?;
            for s in page.scheduled_update_group_actions() {
                let (Some(name), Some(group)) = (s.scheduled_action_name(), s.auto_scaling_group_name()) else {
                    continue;
                };
                if !name.starts_with(&pre) {
                    continue;
                }
                groups.insert(group.to_string());
                out.insert(
                    Key { kind: Kind::Scheduled, asg: group.to_string(), name: name.to_string() },
                    Spec::Scheduled {
                        recurrence: s.recurrence().unwrap_or_default().to_string(),
                        timezone: s.time_zone().map(String::from),
                        min: s.min_size(),
                        max: s.max_size(),
                        desired: s.desired_capacity(),
                    },
                );
            }
            token = page.next_token().map(String::from);
            if token.is_none() {
                break;
            }
        }

        let mut token = None;
        loop {
            let page = self
                .cw
                .describe_alarms()
                .alarm_name_prefix(&pre)
                .set_next_token(token)
                .send()
                .await
                .map_err(aws_err("describing alarms"))?;
            for a in page.metric_alarms() {
                let Some(name) = a.alarm_name() else { continue };
                let target = a.alarm_actions().iter().find_map(|arn| parse_policy_arn(arn));
                let (group, policy) = target.unwrap_or_default();
                let mut dimensions: Vec<(String, String)> = a
                    .dimensions()
                    .iter()
                    .map(|d| (d.name().unwrap_or_default().to_string(), d.value().unwrap_or_default().to_string()))
                    .collect();
                dimensions.sort();
                out.insert(
                    Key { kind: Kind::Alarm, asg: group, name: name.to_string() },
                    Spec::Alarm {
                        metric: a.metric_name().unwrap_or_default().to_string(),
                        namespace: a.namespace().unwrap_or_default().to_string(),
                        statistic: a.statistic().map(|s| s.as_str().to_string()).unwrap_or_default(),
                        period: a.period().unwrap_or_default(),
                        threshold: a.threshold().unwrap_or_default(),
                        comparison: a.comparison_operator().map(|c| c.as_str().to_string()).unwrap_or_default(),
                        evaluation_periods: a.evaluation_periods().unwrap_or_default(),
                        dimensions,
                        policy,
                    },
                );
            }
            token = page.next_token().map(String::from);
            if token.is_none() {
                break;
            }
        }

        for group in groups {
            let hooks = self
                .asg
                .describe_lifecycle_hooks()
                .auto_scaling_group_name(&group)
                .send()
                .await
                .map_err(aws_err(format!("describing the lifecycle hooks of {group}")))?;
            for h in hooks.lifecycle_hooks() {
                let Some(name) = h.lifecycle_hook_name().filter(|n| n.starts_with(&pre)) else { continue };
                out.insert(
                    Key { kind: Kind::Hook, asg: group.clone(), name: name.to_string() },
                    Spec::Hook {
                        heartbeat_timeout: h.heartbeat_timeout().unwrap_or_default(),
                        default_result: h.default_result().unwrap_or_default().to_string(),
                    },
                );
            }
        }
        Ok(out)
    }

    /// Carries out a plan, in its order.
    ///
    /// # Errors
    /// The first failing AWS call; what came before it stays done, and a second apply picks up
    /// from there.
    pub async fn apply(&self, install: &str, plan: &[Change]) -> Result<(), AwsError> {
        for c in plan {
            let Key { kind, asg, name } = &c.key;
            match (c.action, &c.spec) {
                (Action::Unchanged, _) => {}
                (Action::Create | Action::Update, Some(Spec::Policy { adjustment_type, steps, warmup })) => {
                    let adjustments: Vec<StepAdjustment> = steps
                        .iter()
                        .map(|(lo, hi, adj)| {
                            StepAdjustment::builder()
                                .set_metric_interval_lower_bound(*lo)
                                .set_metric_interval_upper_bound(*hi)
                                .scaling_adjustment(*adj as i32)
                                .build()
                        })
                        .collect();
                    self.asg
                        .put_scaling_policy()
                        .auto_scaling_group_name(asg)
                        .policy_name(name)
                        .policy_type("StepScaling")
                        .adjustment_type(adjustment_type)
                        .set_step_adjustments(Some(adjustments))
                        .set_estimated_instance_warmup(*warmup)
                        .metric_aggregation_type("Average")
                        .send()
                        .await
                        .map_err(aws_err(format!("putting scaling policy {name} on {asg}")))?;
                }
                (Action::Create | Action::Update, Some(Spec::Alarm { policy, .. })) => {
                    let arn = self.policy_arn(asg, policy).await?;
                    self.put_alarm(name, c.spec.as_ref(), &arn).await?;
                }
                (
                    Action::Create | Action::Update,
                    Some(Spec::Scheduled { recurrence, timezone, min, max, desired }),
                ) => {
                    self.asg
                        .put_scheduled_update_group_action()
                        .auto_scaling_group_name(asg)
                        .scheduled_action_name(name)
                        .recurrence(recurrence)
                        .set_time_zone(timezone.clone())
                        .set_min_size(*min)
                        .set_max_size(*max)
                        .set_desired_capacity(*desired)
                        .send()
                        .await
                        .map_err(aws_err(format!("putting scheduled action {name} on {asg}")))?;
                }
                (Action::Create | Action::Update, Some(Spec::Hook { heartbeat_timeout, default_result })) => {
                    self.asg
                        .put_lifecycle_hook()
                        .auto_scaling_group_name(asg)
                        .lifecycle_hook_name(name)
                        .lifecycle_transition("autoscaling:EC2_INSTANCE_TERMINATING")
                        .heartbeat_timeout(*heartbeat_timeout)
                        .default_result(default_result)
                        .send()
                        .await
                        .map_err(aws_err(format!("putting lifecycle hook {name} on {asg}")))?;
                }
                (Action::Create | Action::Update, None) => {}
                (Action::Delete, _) => self.delete(*kind, asg, name).await?,
            }
        }
        let _ = install;
        Ok(())
    }

    async fn policy_arn(&self, asg: &str, policy: &str) -> Result<String, AwsError> {
        let out = self
            .asg
            .describe_policies()
            .auto_scaling_group_name(asg)
            .policy_names(policy)
            .send()
            .await
            .map_err(aws_err(format!("describing scaling policy {policy} of {asg}")))?;
        out.scaling_policies().iter().find_map(|p| p.policy_arn().map(String::from)).ok_or_else(|| AwsError {
            what: format!("alarm for {policy}"),
            message: format!("policy {policy} of {asg} does not exist"),
        })
    }

    async fn put_alarm(&self, name: &str, spec: Option<&Spec>, arn: &str) -> Result<(), AwsError> {
        let Some(Spec::Alarm {
            metric,
            namespace,
            statistic,
            period,
            threshold,
            comparison,
            evaluation_periods,
            dimensions,
            ..
        }) = spec
        else {
            return Ok(());
        };
        let dims: Vec<Dimension> =
            dimensions.iter().map(|(k, v)| Dimension::builder().name(k).value(v).build()).collect();
        self.cw
            .put_metric_alarm()
            .alarm_name(name)
            .metric_name(metric)
            .namespace(namespace)
            .statistic(Statistic::from(statistic.as_str()))
            .period(*period)
            .threshold(*threshold)
            .comparison_operator(ComparisonOperator::from(comparison.as_str()))
            .evaluation_periods(*evaluation_periods)
            .set_dimensions(Some(dims))
            .alarm_actions(arn)
            .send()
            .await
            .map_err(aws_err(format!("putting alarm {name}")))?;
        Ok(())
    }

    async fn delete(&self, kind: Kind, asg: &str, name: &str) -> Result<(), AwsError> {
        match kind {
            Kind::Policy => {
                self.asg
                    .delete_policy()
                    .auto_scaling_group_name(asg)
                    .policy_name(name)
                    .send()
                    .await
                    .map_err(aws_err(format!("deleting scaling policy {name} of {asg}")))?;
            }
            Kind::Alarm => {
                self.cw
                    .delete_alarms()
                    .alarm_names(name)
                    .send()
                    .await
                    .map_err(aws_err(format!("deleting alarm {name}")))?;
            }
            Kind::Scheduled => {
                self.asg
                    .delete_scheduled_action()
                    .auto_scaling_group_name(asg)
                    .scheduled_action_name(name)
                    .send()
                    .await
                    .map_err(aws_err(format!("deleting scheduled action {name} of {asg}")))?;
            }
            Kind::Hook => {
                self.asg
                    .delete_lifecycle_hook()
                    .auto_scaling_group_name(asg)
                    .lifecycle_hook_name(name)
                    .send()
                    .await
                    .map_err(aws_err(format!("deleting lifecycle hook {name} of {asg}")))?;
            }
        }
        Ok(())
    }

    /// Instances of `groups` waiting in `Terminating:Wait`, as (group, instance id).
    ///
    /// # Errors
    /// The failing AWS call.
    pub async fn terminating_wait(&self, groups: &[String]) -> Result<Vec<(String, String)>, AwsError> {
        let mut out = Vec::new();
        for chunk in groups.chunks(50) {
            let page = self
                .asg
                .describe_auto_scaling_groups()
                .set_auto_scaling_group_names(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(aws_err("describing Auto Scaling groups"))?;
            for g in page.auto_scaling_groups() {
                let group = g.auto_scaling_group_name().unwrap_or_default();
                for i in g.instances() {
                    if i.lifecycle_state() == Some(&aws_sdk_autoscaling::types::LifecycleState::TerminatingWait) {
                        if let Some(id) = i.instance_id() {
                            out.push((group.to_string(), id.to_string()));
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Keeps an instance in `Terminating:Wait` (its work is still running).
    ///
    /// # Errors
    /// The failing AWS call.
    pub async fn heartbeat(&self, install: &str, group: &str, instance: &str) -> Result<(), AwsError> {
        self.asg
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(group)
            .lifecycle_hook_name(hook_name(install))
            .instance_id(instance)
            .send()
            .await
            .map_err(aws_err(format!("heartbeat for {instance} in {group}")))?;
        Ok(())
    }

    /// Lets the termination of an instance go on.
    ///
    /// # Errors
    /// The failing AWS call.
    pub async fn complete(&self, install: &str, group: &str, instance: &str) -> Result<(), AwsError> {
        self.asg
            .complete_lifecycle_action()
            .auto_scaling_group_name(group)
            .lifecycle_hook_name(hook_name(install))
            .instance_id(instance)
            .lifecycle_action_result("CONTINUE")
            .send()
            .await
            .map_err(aws_err(format!("completing the lifecycle action of {instance} in {group}")))?;
        Ok(())
    }

    /// The alarms named, as DescribeAlarms reports them (missing ones are left out).
    ///
    /// # Errors
    /// The failing AWS call.
    pub async fn alarms(&self, names: &[String]) -> Result<BTreeMap<String, AlarmState>, AwsError> {
        let mut out = BTreeMap::new();
        // DescribeAlarms takes at most 100 names a call.
        for chunk in names.chunks(100) {
            let page = self
                .cw
                .describe_alarms()
                .set_alarm_names(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(aws_err("describing alarms"))?;
            for a in page.metric_alarms() {
                let Some(name) = a.alarm_name() else { continue };
                let value = a.state_reason_data().and_then(latest_datapoint);
                out.insert(
                    name.to_string(),
                    AlarmState {
                        state: a.state_value().map(StateValue::as_str).unwrap_or_default().to_string(),
                        value,
                        threshold: a.threshold().unwrap_or_default(),
                    },
                );
            }
        }
        Ok(out)
    }

    /// Publishes `data` to `namespace` with PutMetricData, up to 1000 values a call.
    ///
    /// # Errors
    /// The failing AWS call.
    pub async fn put_metrics(&self, namespace: &str, data: &[Datum]) -> Result<(), AwsError> {
        for chunk in data.chunks(1000) {
            let datums: Vec<MetricDatum> = chunk
                .iter()
                .map(|d| {
                    MetricDatum::builder()
                        .metric_name(d.name)
                        .set_dimensions(Some(
                            d.dimensions.iter().map(|(k, v)| Dimension::builder().name(*k).value(v).build()).collect(),
                        ))
                        .value(d.value)
                        .unit(if d.seconds { StandardUnit::Seconds } else { StandardUnit::Count })
                        .build()
                })
                .collect();
            self.cw
                .put_metric_data()
                .namespace(namespace)
                .set_metric_data(Some(datums))
                .send()
                .await
                .map_err(aws_err("putting metric data"))?;
        }
        Ok(())
    }
}

/// The newest datapoint in an alarm's state reason data (`{"recentDatapoints": [..]}`).
fn latest_datapoint(json: &str) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v.get("recentDatapoints")?.as_array()?.last()?.as_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_arns_name_group_and_policy() {
        let arn = "arn:aws:autoscaling:us-east-1:123456789012:scalingPolicy:c3:autoScalingGroupName/docker-clients:policyName/vmfleet-x-up";
        assert_eq!(parse_policy_arn(arn), Some(("docker-clients".into(), "vmfleet-x-up".into())));
        assert_eq!(parse_policy_arn("arn:aws:sns:topic"), None);
    }

    #[test]
    fn the_newest_datapoint_is_read_from_the_state_reason() {
        assert_eq!(latest_datapoint(r#"{"version":"1.0","recentDatapoints":[3.0,14.5]}"#), Some(14.5));
        assert_eq!(latest_datapoint("{}"), None);
        assert_eq!(latest_datapoint("not json"), None);
    }
}
