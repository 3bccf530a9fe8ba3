//! `selfheal policy replay`: what a policy would have done over a past time range.
//!
//! The alerts that fired are rebuilt from Prometheus's own series: `ALERTS{alertstate="firing"}`
//! (one sample per rule evaluation while an alert fires) and `ALERTS_FOR_STATE` (its value is
//! the time the alert became active, Alertmanager's `startsAt`). A series silent for longer
//! than `--gap`, or whose active time changes, ended one alert; its next sample starts another.
//! Each alert then goes, in the order they fired, through the service's own path — the gateway's
//! validation and incident key, then the policy service's `Decider` with its windows and limits
//! on an in-memory store — with the configured metrics queried at the moment it fired. So the
//! history and the limits build up exactly as the service's would have. What cannot be known
//! for the past is left out and said: remediation outcomes (so `recently_fixed` never refuses),
//! the freeze, and the dependents' incidents; `input.target` is the repository as it is now,
//! when `[target] url` is configured.

use std::{collections::BTreeMap, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use selfheal_policy::{
    decide,
    decider::{Decider, Mode},
    engine::PolicyEngine,
    promql::{MetricsReader, Prometheus},
};
use selfheal_proto::{names, v1::Decision};
use serde_json::{Value, json};

/// `selfheal policy replay`'s arguments.
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// Start of the range: an RFC 3339 time or a duration before now (`7d`).
    #[arg(long)]
    from: String,
    /// End of the range: an RFC 3339 time or a duration before now (default: now).
    #[arg(long)]
    to: Option<String>,
    /// The Prometheus whose `ALERTS` and `ALERTS_FOR_STATE` series say what fired (default:
    /// the config's `metrics.prometheus_url`). The metrics are read from the config's
    /// Prometheus, or this one when the config names none.
    #[arg(long)]
    prometheus: Option<String>,
    /// The policy service's config file: its `[metrics]` queries, `[limits]`, `[[windows]]`
    /// and `[target]` are used as the service uses them.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Directory of .rego files.
    #[arg(long, default_value = "deploy/policies")]
    policy_dir: std::path::PathBuf,
    /// The rule whose value is the decision.
    #[arg(long, default_value = "data.selfheal.decision")]
    query: String,
    /// A firing series silent this long ended its alert (Alertmanager's `resolve_timeout` is
    /// 5m); make it longer than the rule evaluation interval.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    gap: Duration,
    /// `table` (one line per decision, then a summary per action) or `json` (one document:
    /// every decision with its input, and the summary).
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    output: String,
}

/// A time given as RFC 3339 or as a duration before `now`.
fn time_arg(name: &str, text: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(time.with_timezone(&Utc));
    }
    let ago = humantime::parse_duration(text.trim())
        .map_err(|_| anyhow::anyhow!("{name}: {text:?} is neither an RFC 3339 time nor a duration such as 7d"))?;
    Ok(now - chrono::Duration::from_std(ago)?)
}

/// One series of a range: its labels and its samples (Unix seconds, value), in time order.
pub type Series = (BTreeMap<String, String>, Vec<(f64, f64)>);

/// An alert that fired, rebuilt from the series.
#[derive(Clone, Debug, PartialEq)]
pub struct Fired {
    /// Its labels (without `__name__` and `alertstate`).
    pub labels: BTreeMap<String, String>,
    /// When it became active (Alertmanager's `startsAt`).
    pub starts_at: DateTime<Utc>,
    /// Its first firing sample: when Alertmanager heard of it, and selfheal decided.
    pub fired_at: DateTime<Utc>,
    /// Its last firing sample.
    pub last_seen: DateTime<Utc>,
}

fn at(seconds: f64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis((seconds * 1000.0).round() as i64).unwrap_or_default()
}

fn identity(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(name, _)| name.as_str() != "__name__" && name.as_str() != "alertstate")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The alerts in `alerts` (`ALERTS{alertstate="firing"}`), their start times from `for_state`
/// (`ALERTS_FOR_STATE`), ordered by when they fired.
pub fn rebuild(alerts: &[Series], for_state: &[Series], gap: Duration) -> Vec<Fired> {
    let active: BTreeMap<BTreeMap<String, String>, &Vec<(f64, f64)>> = for_state
        .iter()
        .map(|(labels, samples)| (identity(labels), samples))
        .collect();
    let gap = gap.as_secs_f64();
    let mut fired = Vec::new();
    for (labels, samples) in alerts {
        let labels = identity(labels);
        let active_at = |t: f64| -> Option<f64> {
            // The active time written at this evaluation (or the latest before it).
            let samples = active.get(&labels)?;
            let index = samples.partition_point(|(ts, _)| *ts <= t + 1e-3);
            index.checked_sub(1).map(|i| samples[i].1)
        };
        let mut current: Option<(f64, f64, Option<f64>)> = None; // (fired, last, active)
        for &(t, _) in samples {
            let activity = active_at(t);
            let continues = current.is_some_and(|(_, last, known)| {
                t - last <= gap && (known.is_none() || activity.is_none() || known == activity)
            });
            if !continues {
                if let Some((first, last, known)) = current.take() {
                    fired.push(episode(&labels, first, last, known));
                }
                current = Some((t, t, activity));
            } else if let Some(episode) = current.as_mut() {
                episode.1 = t;
            }
        }
        if let Some((first, last, known)) = current {
            fired.push(episode(&labels, first, last, known));
        }
    }
    fired.sort_by(|a, b| a.fired_at.cmp(&b.fired_at).then_with(|| a.labels.cmp(&b.labels)));
    fired
}

fn episode(labels: &BTreeMap<String, String>, first: f64, last: f64, active: Option<f64>) -> Fired {
    Fired {
        labels: labels.clone(),
        starts_at: at(active.filter(|a| *a > 0.0 && *a <= first).unwrap_or(first)),
        fired_at: at(first),
        last_seen: at(last),
    }
}

/// Alertmanager's fingerprint of a label set (FNV-1a 64 over the sorted names and values,
/// each followed by 0xff), as its webhook sends it.
fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, value) in labels {
        for byte in name.bytes().chain([0xff]).chain(value.bytes()).chain([0xff]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// Prometheus's raw samples of `selector` over (from, to], read a day at a time (a range
/// selector returns every sample, whatever the evaluation interval).
async fn samples(
    client: &reqwest::Client,
    base: &str,
    selector: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<Vec<Series>> {
    let mut merged: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
    let mut start = from - chrono::Duration::milliseconds(1);
    while start < to {
        let end = (start + chrono::Duration::days(1)).min(to);
        let range_ms = (end - start).num_milliseconds().max(1);
        let query = format!("{selector}[{range_ms}ms]");
        let time = format!("{:.3}", end.timestamp_millis() as f64 / 1000.0);
        let url = format!("{}/api/v1/query", base.trim_end_matches('/'));
        let response = client
            .get(&url)
            .query(&[("query", query.as_str()), ("time", time.as_str())])
            .send()
            .await
            .with_context(|| format!("asking {url} for {selector}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("{url}: not a Prometheus answer"))?;
        anyhow::ensure!(
            status.is_success() && body["status"] == "success",
            "{url} refused {query}: {}",
            body["error"].as_str().unwrap_or(status.as_str())
        );
        for series in body["data"]["result"].as_array().into_iter().flatten() {
            let labels: BTreeMap<String, String> = series["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect();
            let values = series["values"].as_array().into_iter().flatten().filter_map(|pair| {
                let t = pair[0].as_f64()?;
                let v = pair[1].as_str()?.parse::<f64>().ok()?;
                Some((t, v))
            });
            merged.entry(labels).or_default().extend(values);
        }
        start = end;
    }
    Ok(merged
        .into_iter()
        .map(|(labels, mut values)| {
            values.sort_by(|a, b| a.0.total_cmp(&b.0));
            values.dedup_by(|a, b| a.0 == b.0);
            (labels, values)
        })
        .collect())
}

/// One replayed decision.
struct Replayed {
    fired: Fired,
    service: String,
    decision: Decision,
    /// What the policy itself answered for the input (before the service's checks).
    policy: Decision,
    input: Value,
}

impl Replayed {
    /// The service's check that overrode the policy (a window, a limit), if one did.
    fn refused_by(&self) -> Option<String> {
        let wanted = format!("; the policy wanted {}", names::action(self.policy.action()));
        (self.decision.action() != self.policy.action()).then(|| {
            self.decision
                .reason
                .split(&wanted)
                .next()
                .unwrap_or_default()
                .to_string()
        })
    }

    fn to_json(&self) -> Value {
        let params = self.decision.params.clone().unwrap_or_default();
        json!({
            "time": self.fired.fired_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            "starts_at": self.fired.starts_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            "last_seen": self.fired.last_seen.to_rfc3339_opts(SecondsFormat::Secs, true),
            "alert": self.fired.labels.get("alertname").cloned().unwrap_or_default(),
            "service": self.service,
            "labels": self.fired.labels,
            "incident": self.decision.incident_key,
            "action": names::action(self.decision.action()),
            "approval": names::approval(self.decision.approval()),
            "reason": self.decision.reason,
            "params": {"target_tag": params.target_tag, "replicas": params.replicas},
            "refused_by": self.refused_by(),
            "policy_action": names::action(self.policy.action()),
            "input": self.input,
        })
    }
}

/// Per final action: decisions, and how many of them a window or limit made so.
fn summary(replayed: &[Replayed]) -> BTreeMap<String, (usize, usize)> {
    let mut summary: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for r in replayed {
        let entry = summary
            .entry(names::action(r.decision.action()).to_string())
            .or_default();
        entry.0 += 1;
        if r.refused_by().is_some() {
            entry.1 += 1;
        }
    }
    summary
}

fn cut(text: &str, width: usize) -> String {
    let mut out: String = text.chars().take(width).collect();
    if text.chars().count() > width {
        out.pop();
        out.push('…');
    }
    out
}

fn print_table(replayed: &[Replayed]) {
    println!(
        "{:<20}  {:<16}  {:<12}  {:<9}  {:<8}  {:<30}  {:<28}  REASON",
        "TIME", "ALERT", "SERVICE", "ACTION", "APPROVAL", "LABELS", "REFUSED BY"
    );
    for r in replayed {
        let labels: Vec<String> = r
            .fired
            .labels
            .iter()
            .filter(|(k, _)| k.as_str() != "alertname" && k.as_str() != "service")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "{:<20}  {:<16}  {:<12}  {:<9}  {:<8}  {:<30}  {:<28}  {}",
            r.fired.fired_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            cut(r.fired.labels.get("alertname").map(String::as_str).unwrap_or("-"), 16),
            cut(&r.service, 12),
            names::action(r.decision.action()),
            names::approval(r.decision.approval()),
            cut(&labels.join(","), 30),
            cut(r.refused_by().as_deref().unwrap_or("-"), 28),
            r.decision.reason
        );
    }
    println!();
    println!("{:<9}  {:>9}  REFUSED BY A WINDOW OR LIMIT", "ACTION", "DECISIONS");
    for (action, (count, refused)) in summary(replayed) {
        println!("{action:<9}  {count:>9}  {refused}");
    }
    println!("{} alerts replayed", replayed.len());
}

/// The alert as the gateway would have published it: its validation and incident key.
fn event(fired: &Fired) -> anyhow::Result<selfheal_proto::v1::AlertEvent> {
    let time = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let body = json!({
        "version": "4",
        "groupKey": "selfheal-replay",
        "status": "firing",
        "receiver": "selfheal-replay",
        "groupLabels": {},
        "commonLabels": fired.labels,
        "commonAnnotations": {},
        "externalURL": "",
        "alerts": [{
            "status": "firing",
            "labels": fired.labels,
            "annotations": {},
            "startsAt": time(fired.starts_at),
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "",
            "fingerprint": fingerprint(&fired.labels),
        }],
    });
    let webhook = selfheal_gateway::webhook::parse(body.to_string().as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut events = selfheal_gateway::webhook::to_events(
        &webhook,
        &selfheal_gateway::webhook::Limits::default(),
        &selfheal_gateway::incident::Identity::default(),
        fired.fired_at,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    events.accepted.pop().ok_or_else(|| {
        let refused: Vec<String> = events.refused.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("{}", refused.join("; "))
    })
}

pub async fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let now = Utc::now();
    let from = time_arg("--from", &args.from, now)?;
    let to = match &args.to {
        Some(to) => time_arg("--to", to, now)?,
        None => now,
    };
    anyhow::ensure!(from < to, "--from must be before --to");
    let config: selfheal_policy::PolicyConfig = match &args.config {
        Some(path) => selfheal_config::load(Some(path), "SELFHEAL_POLICY_")?,
        None => Default::default(),
    };
    let history_url = args
        .prometheus
        .clone()
        .or_else(|| config.metrics.prometheus_url.clone().filter(|u| !u.is_empty()))
        .context("--prometheus is required (or metrics.prometheus_url in --config)")?;
    let metrics_url = config
        .metrics
        .prometheus_url
        .clone()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| history_url.clone());
    let engine: Arc<dyn PolicyEngine> = Arc::new(selfheal_policy::engine::RegoEngine::load_dir(
        &args.policy_dir,
        &args.query,
    )?);
    let prometheus =
        Prometheus::new(&metrics_url, config.metrics.timeout).map_err(|e| anyhow::anyhow!("metrics: {e}"))?;
    // Checked as the service checks them.
    MetricsReader::from_config(&config.metrics).map_err(|e| anyhow::anyhow!("metrics: {e}"))?;
    let memory = || Arc::new(selfheal_bus::kv::MemoryKeyValue::default());
    let control: selfheal_bus::kv::SharedKeyValue = memory();
    let decider = Decider {
        engine: engine.clone(),
        limiter: selfheal_policy::limits::Limiter::new(memory(), control.clone(), config.limits.clone()),
        metrics: MetricsReader::none(),
        target: selfheal_policy::target::TargetReader::from_config(&config.target)
            .map_err(|e| anyhow::anyhow!("target: {e}"))?,
        windows: Arc::new(selfheal_policy::windows::Windows::new(&config.windows).map_err(anyhow::Error::msg)?),
        freeze: selfheal_bus::control::FreezeReader::new(control.clone()),
        preview_control: control,
        dependents: Default::default(),
    };

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .context("an HTTP client")?;
    let alerts = samples(&client, &history_url, "ALERTS{alertstate=\"firing\"}", from, to).await?;
    let for_state = samples(&client, &history_url, "ALERTS_FOR_STATE", from, to).await?;
    let fired = rebuild(&alerts, &for_state, args.gap);

    let mut replayed = Vec::new();
    for fired in fired {
        let event = match event(&fired) {
            Ok(event) => event,
            Err(refused) => {
                eprintln!(
                    "{} {:?}: not an alert the gateway takes: {refused}",
                    fired.fired_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                    fired.labels
                );
                continue;
            }
        };
        let service = fired
            .labels
            .get("service")
            .cloned()
            .unwrap_or_else(|| "_none".to_string());
        let mut decider = decider.clone();
        decider.metrics = MetricsReader::with_source(&config.metrics, Arc::new(prometheus.at(fired.fired_at)))
            .map_err(|e| anyhow::anyhow!("metrics: {e}"))?;
        let (decision, input) = decider
            .decide(&event, Some(&service), false, fired.fired_at, Mode::Reserve)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let policy = decide::decide_input(engine.as_ref(), &input, None, false, fired.fired_at).await;
        replayed.push(Replayed {
            fired,
            service,
            decision,
            policy,
            input,
        });
    }
    match args.output.as_str() {
        "json" => {
            let summary: BTreeMap<String, Value> = summary(&replayed)
                .into_iter()
                .map(|(action, (count, refused))| (action, json!({"decisions": count, "refused": refused})))
                .collect();
            let document = json!({
                "from": from.to_rfc3339_opts(SecondsFormat::Secs, true),
                "to": to.to_rfc3339_opts(SecondsFormat::Secs, true),
                "decisions": replayed.iter().map(Replayed::to_json).collect::<Vec<_>>(),
                "summary": summary,
            });
            println!("{}", serde_json::to_string_pretty(&document)?);
        }
        _ => print_table(&replayed),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn series_become_alerts_split_by_silence_and_by_a_new_active_time() {
        let alert = labels(&[
            ("__name__", "ALERTS"),
            ("alertname", "A"),
            ("alertstate", "firing"),
            ("service", "s"),
        ]);
        let for_state = labels(&[("__name__", "ALERTS_FOR_STATE"), ("alertname", "A"), ("service", "s")]);
        // Fires from 100 to 160 (active since 40), silent, fires at 1000; resolved and active
        // again at 1030 with no silence longer than the gap.
        let firing = vec![
            (100.0, 1.0),
            (130.0, 1.0),
            (160.0, 1.0),
            (1000.0, 1.0),
            (1030.0, 1.0),
            (1060.0, 1.0),
        ];
        let active = vec![
            (100.0, 40.0),
            (130.0, 40.0),
            (160.0, 40.0),
            (1000.0, 940.0),
            (1030.0, 1020.0),
            (1060.0, 1020.0),
        ];
        let fired = rebuild(&[(alert, firing)], &[(for_state, active)], Duration::from_secs(300));
        let seen: Vec<(i64, i64, i64)> = fired
            .iter()
            .map(|f| (f.starts_at.timestamp(), f.fired_at.timestamp(), f.last_seen.timestamp()))
            .collect();
        assert_eq!(seen, vec![(40, 100, 160), (940, 1000, 1000), (1020, 1030, 1060)]);
        assert_eq!(fired[0].labels, labels(&[("alertname", "A"), ("service", "s")]));
    }

    #[test]
    fn fingerprints_are_alertmanagers() {
        // Alertmanager's fingerprint of {alertname="HighErrorRate", service="checkout"}, as
        // model.LabelSet.Fingerprint computes it; the empty set is FNV-1a's offset basis.
        assert_eq!(fingerprint(&BTreeMap::new()), "cbf29ce484222325");
        let a = fingerprint(&labels(&[("alertname", "HighErrorRate"), ("service", "checkout")]));
        let b = fingerprint(&labels(&[("alertname", "HighErrorRate"), ("service", "cart")]));
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn times_are_rfc3339_or_ago() -> anyhow::Result<()> {
        let now = DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")?.with_timezone(&Utc);
        assert_eq!(time_arg("--from", "7d", now)?.to_rfc3339(), "2026-11-24T12:00:00+00:00");
        assert_eq!(
            time_arg("--from", "2026-11-30T00:00:00Z", now)?.to_rfc3339(),
            "2026-11-30T00:00:00+00:00"
        );
        assert!(time_arg("--from", "last week", now).is_err());
        Ok(())
    }
}
