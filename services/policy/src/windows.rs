//! Critical windows: times when selfheal changes nothing by itself, whatever the policy says.
//!
//! `[[windows]]` are recurring (days and hours in an IANA time zone: weekdays 09:00–11:00
//! Asia/Shanghai, a window that crosses midnight when `end` is before `start`) or one-off (a
//! change freeze `from` … `until`), each for every alert or for those whose labels `match`. The
//! ad-hoc freeze (`selfheal freeze on`) is the same thing, set at run time for everything. A
//! decision that would change something inside one escalates, naming the window and when it ends;
//! the windows in force are in the policy input (`input.windows`) too.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Days, NaiveDate, NaiveTime, TimeZone, Utc, Weekday};
use selfheal_config::labels::{LabelMatch, Matchers};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One `[[windows]]` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowConfig {
    /// What the window is called in decisions and the policy input.
    pub name: String,
    /// The alerts it holds for (`{ service = "payments" }`, `{ cluster = { regex = "prod-.*" } }`);
    /// empty: every alert.
    #[serde(rename = "match")]
    pub matches: BTreeMap<String, LabelMatch>,
    /// Recurring: the days (`mon` … `sun`, or `weekdays`, `weekends`, `daily`).
    pub days: Vec<String>,
    /// Recurring: when it starts on each of those days, `HH:MM` in `time_zone`.
    pub start: Option<String>,
    /// Recurring: when it ends, `HH:MM`; before `start`, it ends the next day.
    pub end: Option<String>,
    /// Recurring: an IANA time zone (`Asia/Shanghai`, `Europe/Berlin`); default `UTC`.
    pub time_zone: Option<String>,
    /// One-off: from this time (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// One-off: until this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// Why (shown in the decision).
    pub reason: Option<String>,
}

#[derive(Clone, Debug)]
enum When {
    Recurring {
        days: [bool; 7],
        start: NaiveTime,
        end: NaiveTime,
        zone: chrono_tz::Tz,
    },
    OneOff {
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    },
}

#[derive(Clone, Debug)]
struct Window {
    name: String,
    matchers: Matchers,
    when: When,
    /// How people read it: `mon,tue,wed,thu,fri 09:00–11:00 Asia/Shanghai`.
    described: String,
    reason: Option<String>,
}

/// A window in force for an alert: why nothing changes, and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InForce {
    pub name: String,
    /// `recurring`, `one-off` or `freeze`.
    pub kind: &'static str,
    pub until: DateTime<Utc>,
    pub described: String,
    pub reason: Option<String>,
}

impl InForce {
    /// The ad-hoc freeze as a window.
    pub fn freeze(freeze: &selfheal_bus::control::Freeze) -> Self {
        Self {
            name: "freeze".into(),
            kind: "freeze",
            until: freeze.until,
            described: if freeze.by.is_empty() {
                "the freeze set by `selfheal freeze on`".into()
            } else {
                format!("the freeze set by {} with `selfheal freeze on`", freeze.by)
            },
            reason: Some(freeze.reason.clone()).filter(|r| !r.is_empty()),
        }
    }

    /// Why a change is refused: what [`crate::decide::refuse`] puts before the policy's reason.
    pub fn refusal(&self) -> String {
        let reason = self.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
        format!(
            "critical window {:?}{reason}, {}, is in force until {}: no automatic change",
            self.name,
            self.described,
            self.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }

    /// As the policy input has it.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "kind": self.kind,
            "until": self.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "description": self.described,
            "reason": self.reason,
        })
    }
}

/// The configured windows, checked.
#[derive(Clone, Debug, Default)]
pub struct Windows(Vec<Window>);

fn day(name: &str) -> Option<Vec<Weekday>> {
    use Weekday::*;
    Some(match name.to_ascii_lowercase().as_str() {
        "mon" | "monday" => vec![Mon],
        "tue" | "tuesday" => vec![Tue],
        "wed" | "wednesday" => vec![Wed],
        "thu" | "thursday" => vec![Thu],
        "fri" | "friday" => vec![Fri],
        "sat" | "saturday" => vec![Sat],
        "sun" | "sunday" => vec![Sun],
        "weekdays" => vec![Mon, Tue, Wed, Thu, Fri],
        "weekends" => vec![Sat, Sun],
        "daily" => vec![Mon, Tue, Wed, Thu, Fri, Sat, Sun],
        _ => return None,
    })
}

impl Windows {
    /// Checks every entry; an error names `windows[i].<field>` and the problem.
    pub fn new(configs: &[WindowConfig]) -> Result<Self, String> {
        let mut windows = Vec::new();
        for (i, config) in configs.iter().enumerate() {
            let field = |name: &str| format!("windows[{i}].{name}");
            if config.name.trim().is_empty() {
                return Err(format!("{}: give the window a name", field("name")));
            }
            let matchers =
                Matchers::new(&config.matches).map_err(|(name, problem)| format!("{}: {problem}", field(&name)))?;
            let recurring = !config.days.is_empty() || config.start.is_some() || config.end.is_some();
            let one_off = config.from.is_some() || config.until.is_some();
            let when = match (recurring, one_off) {
                (true, true) => {
                    return Err(format!(
                        "{}: a window is recurring (days, start, end) or one-off (from, until), not both",
                        field("from")
                    ));
                }
                (false, false) => {
                    return Err(format!(
                        "{}: set days, start and end (recurring) or from and until (one-off)",
                        field("days")
                    ));
                }
                (true, false) => {
                    let mut days = [false; 7];
                    for name in &config.days {
                        let found = day(name).ok_or_else(|| {
                            format!(
                                "{}: {name:?} is not a day (mon … sun, weekdays, weekends, daily)",
                                field("days")
                            )
                        })?;
                        for d in found {
                            days[d.num_days_from_monday() as usize] = true;
                        }
                    }
                    if !days.contains(&true) {
                        return Err(format!("{}: name at least one day", field("days")));
                    }
                    let time = |name: &str, value: &Option<String>| {
                        let value = value
                            .as_deref()
                            .ok_or_else(|| format!("{}: required (HH:MM)", field(name)))?;
                        NaiveTime::parse_from_str(value, "%H:%M")
                            .map_err(|_| format!("{}: {value:?} is not a time of day (HH:MM)", field(name)))
                    };
                    let (start, end) = (time("start", &config.start)?, time("end", &config.end)?);
                    if start == end {
                        return Err(format!(
                            "{}: the same as start: the window would be empty",
                            field("end")
                        ));
                    }
                    let zone_name = config.time_zone.as_deref().unwrap_or("UTC");
                    let zone: chrono_tz::Tz = zone_name.parse().map_err(|_| {
                        format!(
                            "{}: {zone_name:?} is not an IANA time zone (e.g. Asia/Shanghai)",
                            field("time_zone")
                        )
                    })?;
                    When::Recurring { days, start, end, zone }
                }
                (false, true) => match (config.from, config.until) {
                    (Some(from), Some(until)) if from < until => When::OneOff { from, until },
                    (Some(_), Some(_)) => return Err(format!("{}: must be after from", field("until"))),
                    (None, _) => return Err(format!("{}: required with until", field("from"))),
                    (_, None) => return Err(format!("{}: required with from", field("until"))),
                },
            };
            let described = match &when {
                When::Recurring { days, start, end, zone } => {
                    let names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
                    let days: Vec<&str> = names.iter().zip(days).filter(|(_, on)| **on).map(|(n, _)| *n).collect();
                    format!(
                        "{} {}–{} {zone}",
                        days.join(","),
                        start.format("%H:%M"),
                        end.format("%H:%M")
                    )
                }
                When::OneOff { from, until } => format!(
                    "from {} until {}",
                    from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            };
            windows.push(Window {
                name: config.name.clone(),
                matchers,
                when,
                described,
                reason: config.reason.clone().filter(|r| !r.is_empty()),
            });
        }
        Ok(Self(windows))
    }

    /// The windows in force at `now` for an alert with `labels`, the soonest to end first.
    pub fn in_force(&self, labels: &BTreeMap<String, String>, now: DateTime<Utc>) -> Vec<InForce> {
        let mut found: Vec<InForce> = self
            .0
            .iter()
            .filter(|w| w.matchers.matches(labels))
            .filter_map(|w| {
                let until = match &w.when {
                    When::OneOff { from, until } => (*from <= now && now < *until).then_some(*until)?,
                    When::Recurring { days, start, end, zone } => recurring_until(days, *start, *end, zone, now)?,
                };
                Some(InForce {
                    name: w.name.clone(),
                    kind: match w.when {
                        When::OneOff { .. } => "one-off",
                        When::Recurring { .. } => "recurring",
                    },
                    until,
                    described: w.described.clone(),
                    reason: w.reason.clone(),
                })
            })
            .collect();
        found.sort_by_key(|w| w.until);
        found
    }
}

/// When the occurrence of a recurring window that holds `now` ends, if one does.
fn recurring_until(
    days: &[bool; 7],
    start: NaiveTime,
    end: NaiveTime,
    zone: &chrono_tz::Tz,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let local = now.with_timezone(zone);
    let (today, time) = (local.date_naive(), local.time());
    let on = |date: NaiveDate| days[date.weekday().num_days_from_monday() as usize];
    let at = |date: NaiveDate, time: NaiveTime| -> Option<DateTime<Utc>> {
        // A local time a DST change skips is taken an hour later; one it repeats, the first time.
        let local = date.and_time(time);
        zone.from_local_datetime(&local)
            .earliest()
            .or_else(|| {
                zone.from_local_datetime(&(local + chrono::Duration::hours(1)))
                    .earliest()
            })
            .map(|t| t.with_timezone(&Utc))
    };
    if start < end {
        return (on(today) && start <= time && time < end)
            .then(|| at(today, end))
            .flatten();
    }
    // Crosses midnight: from `start` on a listed day until `end` the next day.
    if on(today) && time >= start {
        return at(today.checked_add_days(Days::new(1))?, end);
    }
    let yesterday = today.checked_sub_days(Days::new(1))?;
    (on(yesterday) && time < end).then(|| at(today, end)).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).expect("a time").with_timezone(&Utc)
    }

    fn trading() -> WindowConfig {
        WindowConfig {
            name: "market-open".into(),
            matches: BTreeMap::from([("service".into(), LabelMatch::Exact("payments".into()))]),
            days: vec!["weekdays".into()],
            start: Some("09:00".into()),
            end: Some("11:00".into()),
            time_zone: Some("Asia/Shanghai".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_recurring_window_holds_on_its_days_and_hours_in_its_zone() {
        let windows = Windows::new(&[trading()]).expect("valid");
        let payments = labels(&[("service", "payments")]);
        // Tuesday 2026-12-01 09:30 in Shanghai is 01:30 UTC; it ends at 11:00 there, 03:00 UTC.
        let inside = windows.in_force(&payments, utc("2026-12-01T01:30:00Z"));
        assert_eq!(inside.len(), 1);
        assert_eq!(inside[0].until, utc("2026-12-01T03:00:00Z"));
        assert_eq!(inside[0].described, "mon,tue,wed,thu,fri 09:00–11:00 Asia/Shanghai");
        assert!(
            inside[0].refusal().contains("critical window \"market-open\""),
            "{}",
            inside[0].refusal()
        );
        // 11:00 there: over. Saturday: not a listed day. Another service: not matched.
        assert!(windows.in_force(&payments, utc("2026-12-01T03:00:00Z")).is_empty());
        assert!(windows.in_force(&payments, utc("2026-12-05T01:30:00Z")).is_empty());
        assert!(
            windows
                .in_force(&labels(&[("service", "cart")]), utc("2026-12-01T01:30:00Z"))
                .is_empty()
        );
    }

    #[test]
    fn a_window_across_midnight_ends_the_next_day() {
        let night = WindowConfig {
            name: "batch".into(),
            days: vec!["fri".into()],
            start: Some("22:00".into()),
            end: Some("02:00".into()),
            ..Default::default()
        };
        let windows = Windows::new(&[night]).expect("valid");
        let any = labels(&[]);
        // Friday 2026-12-04 23:00 UTC and Saturday 01:00: both in Friday's window.
        assert_eq!(
            windows.in_force(&any, utc("2026-12-04T23:00:00Z"))[0].until,
            utc("2026-12-05T02:00:00Z")
        );
        assert_eq!(
            windows.in_force(&any, utc("2026-12-05T01:00:00Z"))[0].until,
            utc("2026-12-05T02:00:00Z")
        );
        // Saturday 23:00 is not Friday's; Friday 01:00 would be Thursday's.
        assert!(windows.in_force(&any, utc("2026-12-05T23:00:00Z")).is_empty());
        assert!(windows.in_force(&any, utc("2026-12-04T01:00:00Z")).is_empty());
    }

    #[test]
    fn a_one_off_freeze_holds_between_its_times() {
        let freeze = WindowConfig {
            name: "black-friday".into(),
            from: Some(utc("2026-11-27T00:00:00Z")),
            until: Some(utc("2026-11-30T00:00:00Z")),
            reason: Some("peak sales".into()),
            ..Default::default()
        };
        let windows = Windows::new(&[freeze]).expect("valid");
        let inside = windows.in_force(&labels(&[]), utc("2026-11-28T12:00:00Z"));
        assert_eq!(inside[0].kind, "one-off");
        assert!(inside[0].refusal().contains("(peak sales)"));
        assert!(windows.in_force(&labels(&[]), utc("2026-11-30T00:00:00Z")).is_empty());
    }

    #[test]
    fn bad_windows_are_named() {
        let error = |config: WindowConfig| Windows::new(&[config]).err().unwrap_or_default();
        assert!(
            error(WindowConfig {
                time_zone: Some("Mars/Olympus".into()),
                ..trading()
            })
            .starts_with("windows[0].time_zone: \"Mars/Olympus\" is not an IANA time zone")
        );
        assert!(
            error(WindowConfig {
                days: vec!["someday".into()],
                ..trading()
            })
            .starts_with("windows[0].days:")
        );
        assert!(
            error(WindowConfig {
                start: Some("9am".into()),
                ..trading()
            })
            .starts_with("windows[0].start:")
        );
        assert!(
            error(WindowConfig {
                name: String::new(),
                ..trading()
            })
            .starts_with("windows[0].name:")
        );
        assert!(
            error(WindowConfig {
                until: Some(utc("2026-11-30T00:00:00Z")),
                ..trading()
            })
            .contains("recurring (days, start, end) or one-off")
        );
    }
}
