//! Step scaling with the semantics of an AWS step scaling policy, applied to a pool's warm
//! target instead of a group's desired capacity.
//!
//! Step bounds are relative to the alarm's threshold: with breach = value − threshold, a step
//! whose `lower <= breach < upper` applies when the breach is at or above zero (lower bound
//! inclusive), and `lower < breach <= upper` below zero, as AWS documents. A missing lower bound
//! is −∞, a missing upper bound +∞. `PercentChangeInCapacity` rounds as AWS does: a change
//! between 0 and 1 becomes 1 (and −1 for negative ones), larger ones are truncated.

/// How an adjustment changes the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdjustmentType {
    /// Add the adjustment.
    ChangeInCapacity,
    /// Add the adjustment as a percentage of the current target.
    PercentChangeInCapacity,
    /// Set the target to the adjustment.
    ExactCapacity,
}

impl AdjustmentType {
    /// Parses the AWS name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ChangeInCapacity" => Some(Self::ChangeInCapacity),
            "PercentChangeInCapacity" => Some(Self::PercentChangeInCapacity),
            "ExactCapacity" => Some(Self::ExactCapacity),
            _ => None,
        }
    }

    /// The AWS name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChangeInCapacity => "ChangeInCapacity",
            Self::PercentChangeInCapacity => "PercentChangeInCapacity",
            Self::ExactCapacity => "ExactCapacity",
        }
    }
}

/// One step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// Lower bound of the breach, if any.
    pub lower: Option<f64>,
    /// Upper bound of the breach, if any.
    pub upper: Option<f64>,
    /// The adjustment.
    pub adjustment: i64,
}

/// Checks that steps neither overlap nor leave gaps, and that only the first may be open
/// below and only the last open above (AWS refuses such policies too).
///
/// # Errors
/// A message naming the step (by index) at fault.
pub fn validate_steps(steps: &[Step]) -> Result<(), String> {
    if steps.is_empty() {
        return Err("at least one step is needed".into());
    }
    let mut sorted: Vec<(usize, &Step)> = steps.iter().enumerate().collect();
    sorted.sort_by(|a, b| a.1.lower.unwrap_or(f64::NEG_INFINITY).total_cmp(&b.1.lower.unwrap_or(f64::NEG_INFINITY)));
    for (i, s) in &sorted {
        if let (Some(l), Some(u)) = (s.lower, s.upper) {
            if l >= u {
                return Err(format!("steps[{i}]: lower {l} is not below upper {u}"));
            }
        }
        if s.lower.is_none() && s.upper.is_none() && steps.len() > 1 {
            return Err(format!("steps[{i}]: a step open at both ends must be the only one"));
        }
    }
    for pair in sorted.windows(2) {
        let ((i, a), (j, b)) = (pair[0], pair[1]);
        match (a.upper, b.lower) {
            (Some(u), Some(l)) if u == l => {}
            (Some(u), Some(l)) if u < l => {
                return Err(format!("steps[{i}] and steps[{j}] leave a gap from {u} to {l}"))
            }
            (Some(_), Some(_)) | (None, _) => return Err(format!("steps[{i}] and steps[{j}] overlap")),
            (Some(_), None) => return Err(format!("steps[{j}]: only the lowest step may be open below")),
        }
    }
    Ok(())
}

/// An alarm as CloudWatch reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlarmReading {
    /// In state `ALARM`.
    pub in_alarm: bool,
    /// The most recent datapoint, when the alarm reports one.
    pub value: Option<f64>,
    /// The alarm's threshold.
    pub threshold: f64,
}

/// The step policy of a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct StepPolicy {
    /// How adjustments apply.
    pub adjustment_type: AdjustmentType,
    /// The steps.
    pub steps: Vec<Step>,
    /// No further adjustment within this of the last.
    pub cooldown_ms: i64,
}

/// The step that matches `breach`, if any.
pub fn matching_step(steps: &[Step], breach: f64) -> Option<&Step> {
    steps.iter().find(|s| {
        let lo = s.lower.unwrap_or(f64::NEG_INFINITY);
        let hi = s.upper.unwrap_or(f64::INFINITY);
        if breach >= 0.0 {
            lo <= breach && breach < hi
        } else {
            lo < breach && breach <= hi
        }
    })
}

/// The new warm target, with the reason, when the alarm calls for a change now; `None` when it
/// does not (alarm not firing, within the cooldown, no matching step, or no change).
/// The result stays within `floor..=ceiling`.
pub fn next_target(
    current: u32,
    policy: &StepPolicy,
    alarm: &AlarmReading,
    last_change_ms: Option<i64>,
    now_ms: i64,
    floor: u32,
    ceiling: u32,
) -> Option<(u32, String)> {
    if !alarm.in_alarm || last_change_ms.is_some_and(|t| now_ms - t < policy.cooldown_ms) {
        return None;
    }
    // Without a datapoint the alarm still fired: the smallest breach is assumed.
    let breach = alarm.value.map_or(0.0, |v| v - alarm.threshold);
    let step = matching_step(&policy.steps, breach)?;
    let cur = i64::from(current);
    let wanted = match policy.adjustment_type {
        AdjustmentType::ChangeInCapacity => cur + step.adjustment,
        AdjustmentType::ExactCapacity => step.adjustment,
        AdjustmentType::PercentChangeInCapacity => {
            let change = cur as f64 * step.adjustment as f64 / 100.0;
            let rounded = if change > 0.0 && change < 1.0 {
                1
            } else if change < 0.0 && change > -1.0 {
                -1
            } else {
                change.trunc() as i64
            };
            cur + rounded
        }
    };
    let new = wanted.clamp(i64::from(floor), i64::from(ceiling.max(floor))) as u32;
    (new != current).then(|| {
        let value = alarm.value.map_or("no datapoint".to_string(), |v| format!("value {v}"));
        (
            new,
            format!(
                "alarm firing ({value}, threshold {}): {} {} moves the warm target from {current} to {new}",
                alarm.threshold,
                policy.adjustment_type.as_str(),
                step.adjustment
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps() -> Vec<Step> {
        vec![
            Step { lower: Some(0.0), upper: Some(10.0), adjustment: 1 },
            Step { lower: Some(10.0), upper: None, adjustment: 3 },
        ]
    }

    fn policy(t: AdjustmentType, steps: Vec<Step>) -> StepPolicy {
        StepPolicy { adjustment_type: t, steps, cooldown_ms: 60_000 }
    }

    fn firing(value: f64) -> AlarmReading {
        AlarmReading { in_alarm: true, value: Some(value), threshold: 2.0 }
    }

    #[test]
    fn the_matching_step_applies() {
        let p = policy(AdjustmentType::ChangeInCapacity, steps());
        assert_eq!(next_target(2, &p, &firing(5.0), None, 0, 0, 100).map(|t| t.0), Some(3), "breach 3: first step");
        assert_eq!(next_target(2, &p, &firing(12.0), None, 0, 0, 100).map(|t| t.0), Some(5), "breach 10: second step");
        assert_eq!(
            next_target(2, &p, &firing(2.0), None, 0, 0, 100).map(|t| t.0),
            Some(3),
            "breach 0: lower inclusive"
        );
        let ok = AlarmReading { in_alarm: false, ..firing(50.0) };
        assert_eq!(next_target(2, &p, &ok, None, 0, 0, 100), None, "not firing");
    }

    #[test]
    fn cooldown_bounds_and_types() {
        let p = policy(AdjustmentType::ChangeInCapacity, steps());
        assert_eq!(next_target(2, &p, &firing(50.0), Some(0), 30_000, 0, 100), None, "within the cooldown");
        assert_eq!(next_target(2, &p, &firing(50.0), Some(0), 60_000, 0, 100).map(|t| t.0), Some(5));
        assert_eq!(next_target(4, &p, &firing(50.0), None, 0, 0, 6).map(|t| t.0), Some(6), "ceiling");
        assert_eq!(next_target(6, &p, &firing(50.0), None, 0, 0, 6), None, "already at the ceiling");
        let down =
            policy(AdjustmentType::ChangeInCapacity, vec![Step { lower: None, upper: Some(0.0), adjustment: -2 }]);
        assert_eq!(next_target(3, &down, &firing(1.0), None, 0, 2, 10).map(|t| t.0), Some(2), "floor");
        let exact = policy(AdjustmentType::ExactCapacity, steps());
        assert_eq!(next_target(2, &exact, &firing(20.0), None, 0, 0, 100).map(|t| t.0), Some(3));
        let pct = policy(
            AdjustmentType::PercentChangeInCapacity,
            vec![Step { lower: Some(0.0), upper: None, adjustment: 50 }],
        );
        assert_eq!(next_target(1, &pct, &firing(3.0), None, 0, 0, 100).map(|t| t.0), Some(2), "0.5 rounds to 1");
        assert_eq!(next_target(5, &pct, &firing(3.0), None, 0, 0, 100).map(|t| t.0), Some(7), "2.5 truncates to 2");
    }

    #[test]
    fn step_sets_are_checked() {
        assert!(validate_steps(&steps()).is_ok());
        let gap = vec![
            Step { lower: Some(0.0), upper: Some(5.0), adjustment: 1 },
            Step { lower: Some(10.0), upper: None, adjustment: 3 },
        ];
        assert!(validate_steps(&gap).expect_err("gap").contains("gap"));
        let overlap = vec![
            Step { lower: Some(0.0), upper: Some(15.0), adjustment: 1 },
            Step { lower: Some(10.0), upper: None, adjustment: 3 },
        ];
        assert!(validate_steps(&overlap).expect_err("overlap").contains("overlap"));
        assert!(validate_steps(&[]).is_err());
    }
}
