//! Schedule windows: standard five-field cron expressions (minute, hour, day of month, month,
//! day of week; Sunday is 0 or 7, as in crontab and AWS scheduled actions) evaluated in a named
//! time zone. A window is active during every minute its expression matches, so
//! `* 8-17 * * 1-5` in `America/New_York` is "weekdays, 08:00 to 17:59 New York time", right
//! across daylight-saving changes because the match is made on the local wall clock.

use std::str::FromStr;

use chrono::{TimeZone, Timelike};

/// A parsed cron window in a time zone.
#[derive(Debug, Clone)]
pub struct CronWindow {
    expr: String,
    schedule: cron::Schedule,
    tz: chrono_tz::Tz,
}

impl PartialEq for CronWindow {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr && self.tz == other.tz
    }
}

impl CronWindow {
    /// Parses `expr` (five fields) for time zone `tz` (an IANA name such as `Europe/Berlin`).
    ///
    /// # Errors
    /// A message naming the bad field or time zone.
    pub fn parse(expr: &str, tz: &str) -> Result<Self, String> {
        let tz: chrono_tz::Tz =
            tz.parse().map_err(|_| format!("unknown time zone {tz:?} (use an IANA name such as Europe/Berlin)"))?;
        let quartz = to_quartz(expr)?;
        let schedule = cron::Schedule::from_str(&quartz).map_err(|e| format!("cron {expr:?}: {e}"))?;
        Ok(Self { expr: expr.to_string(), schedule, tz })
    }

    /// The expression as written.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The time zone's name.
    pub fn timezone(&self) -> &str {
        self.tz.name()
    }

    /// Whether the minute containing `now_ms` matches, on the zone's wall clock.
    pub fn matches(&self, now_ms: i64) -> bool {
        let Some(t) = self.tz.timestamp_millis_opt(now_ms).single() else { return false };
        let Some(minute) = t.with_second(0).and_then(|t| t.with_nanosecond(0)) else { return false };
        self.schedule.includes(minute)
    }
}

const FIELDS: [&str; 5] = ["minute", "hour", "day of month", "month", "day of week"];

/// Standard cron to the `cron` crate's Quartz form: a seconds field in front, and days of the
/// week moved from 0–7 (Sunday 0 or 7) to 1–7 (Sunday 1).
fn to_quartz(expr: &str) -> Result<String, String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "cron {expr:?} has {} fields; use five: minute hour day-of-month month day-of-week",
            fields.len()
        ));
    }
    for (f, name) in fields.iter().zip(FIELDS) {
        if f.contains('?') || f.contains('L') || f.contains('#') {
            return Err(format!("cron {expr:?}: the {name} field {f:?} uses syntax standard cron does not have"));
        }
    }
    if fields[2] != "*" && fields[4] != "*" {
        // Vixie cron matches either day field then, Quartz both: refuse rather than guess.
        return Err(format!("cron {expr:?}: restrict the day of month or the day of week, not both"));
    }
    let dow = fields[4]
        .split(',')
        .map(|part| {
            dow_part(part).ok_or_else(|| format!("cron {expr:?}: day of week {part:?} is not valid (0-7 or SUN-SAT)"))
        })
        .collect::<Result<Vec<_>, _>>()?
        .join(",");
    let dow = if dow == "*" { "*".to_string() } else { dow };
    Ok(format!("0 {} {} {} {} {dow}", fields[0], fields[1], fields[2], fields[3]))
}

/// A day of the week in standard numbering (0–7, or a name), as a number.
fn dow_std(s: &str) -> Option<u8> {
    const NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
    if let Some(i) = NAMES.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Some(i as u8);
    }
    s.parse().ok().filter(|n| *n <= 7)
}

/// One comma-separated part of a day-of-week field, in Quartz numbering (Sunday 1).
fn dow_part(part: &str) -> Option<String> {
    let (range, step) = match part.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (part, None),
    };
    if let Some(s) = step {
        s.parse::<u8>().ok().filter(|n| *n > 0)?;
    }
    let step_s = step.map(|s| format!("/{s}")).unwrap_or_default();
    if range == "*" {
        return Some(format!("*{step_s}"));
    }
    match range.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (dow_std(a)?, dow_std(b)?);
            match (a, b) {
                _ if a > b => None,
                // ..-7 ends on Sunday, which Quartz numbers 1: split the Sunday off.
                (0, 7) if step.is_none() => Some("1-7".into()),
                (a, 7) if step.is_none() => Some(format!("{}-7,1", a + 1)),
                (_, 7) => None,
                (a, b) => Some(format!("{}-{}{step_s}", a + 1, b + 1)),
            }
        }
        None => {
            let n = dow_std(range)?;
            Some(format!("{}{step_s}", if n == 7 { 1 } else { n + 1 }))
        }
    }
}

/// A schedule window of a pool: while `cron` matches, `min_idle` holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// When.
    pub cron: CronWindow,
    /// The warm target meanwhile.
    pub min_idle: u32,
}

/// The warm target at `now_ms`: the last matching window's, else `base`.
pub fn scheduled_min_idle(base: u32, windows: &[Window], now_ms: i64) -> u32 {
    windows.iter().rev().find(|w| w.cron.matches(now_ms)).map_or(base, |w| w.min_idle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(rfc3339).expect("time").timestamp_millis()
    }

    #[test]
    fn weekdays_are_standard_cron_weekdays() {
        let w = CronWindow::parse("* 8-17 * * 1-5", "UTC").expect("parse");
        assert!(w.matches(at("2026-11-30T09:00:00Z")), "Monday");
        assert!(w.matches(at("2026-12-04T17:59:30Z")), "Friday, last minute");
        assert!(!w.matches(at("2026-12-05T09:00:00Z")), "Saturday");
        assert!(!w.matches(at("2026-11-29T09:00:00Z")), "Sunday");
        assert!(!w.matches(at("2026-11-30T18:00:00Z")), "after hours");
        let sun = CronWindow::parse("* * * * 0", "UTC").expect("parse");
        let sun7 = CronWindow::parse("* * * * 7", "UTC").expect("parse");
        let names = CronWindow::parse("* * * * SAT,SUN", "UTC").expect("parse");
        let weekend = CronWindow::parse("* * * * 6-7", "UTC").expect("parse");
        for w in [&sun, &sun7, &names, &weekend] {
            assert!(w.matches(at("2026-11-29T12:00:00Z")), "{} on a Sunday", w.expr());
            assert!(!w.matches(at("2026-11-30T12:00:00Z")), "{} on a Monday", w.expr());
        }
        assert!(weekend.matches(at("2026-11-28T12:00:00Z")), "Saturday");
    }

    #[test]
    fn the_wall_clock_of_the_zone_holds_across_daylight_saving() {
        let w = CronWindow::parse("* 8-17 * * *", "America/New_York").expect("parse");
        // Winter: 08:30 EST is 13:30 UTC.
        assert!(w.matches(at("2026-03-07T13:30:00Z")));
        assert!(!w.matches(at("2026-03-07T12:30:00Z")));
        // After the change on 8 March 2026: 08:30 EDT is 12:30 UTC.
        assert!(w.matches(at("2026-03-09T12:30:00Z")));
        assert!(!w.matches(at("2026-03-09T22:30:00Z")), "18:30 EDT");
        // Berlin changes on another date; its own wall clock counts.
        let b = CronWindow::parse("0-59 9 * * *", "Europe/Berlin").expect("parse");
        assert!(b.matches(at("2026-03-28T08:15:00Z")), "09:15 CET");
        assert!(b.matches(at("2026-03-30T07:15:00Z")), "09:15 CEST");
    }

    #[test]
    fn bad_expressions_are_refused_with_the_reason() {
        for (expr, tz, want) in [
            ("* * * *", "UTC", "has 4 fields"),
            ("* * * * SAT-SUN", "UTC", "day of week \"SAT-SUN\""),
            ("* * * * 8", "UTC", "day of week \"8\""),
            ("* * 1 * 1", "UTC", "not both"),
            ("0 0 ? * MON", "UTC", "syntax standard cron does not have"),
            ("61 * * * *", "UTC", "cron \"61 * * * *\""),
            ("* * * * *", "Mars/Olympus", "unknown time zone"),
        ] {
            let err = CronWindow::parse(expr, tz).expect_err(expr);
            assert!(err.contains(want), "{expr}: {err}");
        }
    }

    #[test]
    fn the_last_matching_window_wins() {
        let windows = vec![
            Window { cron: CronWindow::parse("* 8-17 * * 1-5", "UTC").expect("p"), min_idle: 10 },
            Window { cron: CronWindow::parse("* 12 * * 1-5", "UTC").expect("p"), min_idle: 20 },
        ];
        assert_eq!(scheduled_min_idle(2, &windows, at("2026-11-30T09:00:00Z")), 10);
        assert_eq!(scheduled_min_idle(2, &windows, at("2026-11-30T12:10:00Z")), 20);
        assert_eq!(scheduled_min_idle(2, &windows, at("2026-11-30T20:00:00Z")), 2);
    }
}
