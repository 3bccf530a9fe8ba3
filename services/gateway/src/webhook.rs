//! Alertmanager's webhook body (version 4), parsed and validated into [`AlertEvent`]s.
//!
//! Every refusal names the field and the problem, so the sender can fix it.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use selfheal_proto::{
    time::timestamp,
    v1::{Alert, AlertEvent},
};
use serde::Deserialize;

use crate::{error::RequestError, incident};

/// Alertmanager's webhook payload, `version: "4"`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    pub version: String,
    #[serde(default)]
    pub group_key: String,
    #[serde(default)]
    pub truncated_alerts: u32,
    pub status: String,
    #[serde(default)]
    pub receiver: String,
    #[serde(default)]
    pub group_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_annotations: BTreeMap<String, String>,
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<WebhookAlert>,
}

/// One alert in the webhook.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookAlert {
    pub status: String,
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub starts_at: String,
    #[serde(default)]
    pub ends_at: String,
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    #[serde(default)]
    pub fingerprint: String,
}

/// Limits on what one body may hold.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_alerts: usize,
    pub max_labels: usize,
    pub max_label_value_len: usize,
    pub max_annotation_value_len: usize,
    pub max_annotations_bytes: usize,
    /// Longest `generatorURL`, `fingerprint`, `groupKey`, `externalURL` or `receiver`.
    pub max_field_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_alerts: 1000,
            max_labels: 64,
            max_label_value_len: 1024,
            max_annotation_value_len: 16 * 1024,
            max_annotations_bytes: 64 * 1024,
            max_field_len: 4096,
        }
    }
}

/// Parses a webhook body; errors name the JSON path that is wrong.
pub fn parse(body: &[u8]) -> Result<Webhook, RequestError> {
    if std::str::from_utf8(body).is_err() {
        return Err(RequestError::invalid("body", "is not valid UTF-8"));
    }
    let deserializer = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path == "?" {
            "body".to_string()
        } else {
            path
        };
        RequestError::invalid(field, e.into_inner().to_string())
    })
}

pub use selfheal_proto::names::is_dns1123_label;

/// The subject token for an alert without a `service` label (`_` cannot start a DNS-1123 label,
/// so it never collides with a real service).
pub const NO_SERVICE: &str = "_none";

/// A body's alerts: the ones to store, and the ones refused one by one.
#[derive(Debug, Default)]
pub struct Events {
    /// Alerts that passed every check, in body order.
    pub accepted: Vec<AlertEvent>,
    /// One refusal per alert that did not (each names its `alerts[i]` field).
    pub refused: Vec<RequestError>,
}

/// Validates the webhook and turns each alert into an [`AlertEvent`]. A problem with the body as a whole (version, no alerts, too
/// many) refuses it; a problem with one alert refuses that alert only, so one bad label does not
/// cost the rest of its group (Alertmanager does not send a 4xx again). A body whose every alert
/// is refused is refused, naming the first alert's problem.
pub fn to_events(
    webhook: &Webhook,
    limits: &Limits,
    identity: &incident::Identity,
    received_at: DateTime<Utc>,
) -> Result<Events, RequestError> {
    if webhook.version != "4" {
        return Err(RequestError::invalid(
            "version",
            format!("must be \"4\", got {:?}", webhook.version),
        ));
    }
    if webhook.alerts.is_empty() {
        return Err(RequestError::invalid("alerts", "is empty"));
    }
    if webhook.alerts.len() > limits.max_alerts {
        return Err(RequestError::invalid(
            "alerts",
            format!(
                "has {} alerts, more than the limit of {}",
                webhook.alerts.len(),
                limits.max_alerts
            ),
        ));
    }
    for (name, value) in [
        ("groupKey", &webhook.group_key),
        ("externalURL", &webhook.external_url),
        ("receiver", &webhook.receiver),
    ] {
        check_len(name.to_string(), value, limits)?;
    }
    let mut events = Events::default();
    for (index, alert) in webhook.alerts.iter().enumerate() {
        match to_event(webhook, index, alert, limits, identity, received_at) {
            Ok(event) => events.accepted.push(event),
            Err(refusal) => events.refused.push(refusal),
        }
    }
    if events.accepted.is_empty() {
        // Not empty: the body has alerts, and each was either accepted or refused.
        return Err(events
            .refused
            .into_iter()
            .next()
            .unwrap_or_else(|| RequestError::invalid("alerts", "is empty")));
    }
    Ok(events)
}

fn to_event(
    webhook: &Webhook,
    index: usize,
    alert: &WebhookAlert,
    limits: &Limits,
    identity: &incident::Identity,
    received_at: DateTime<Utc>,
) -> Result<AlertEvent, RequestError> {
    let field = |name: &str| format!("alerts[{index}].{name}");
    check_alert(index, &alert.status, &alert.labels, &alert.annotations, limits)?;
    check_len(field("generatorURL"), &alert.generator_url, limits)?;
    check_len(field("fingerprint"), &alert.fingerprint, limits)?;
    let starts_at = parse_time(&alert.starts_at)
        .ok_or_else(|| RequestError::invalid(field("startsAt"), "is not an RFC 3339 time"))?;
    let ends_at = match alert.ends_at.as_str() {
        "" => None,
        text => {
            Some(parse_time(text).ok_or_else(|| RequestError::invalid(field("endsAt"), "is not an RFC 3339 time"))?)
        }
    }
    // Alertmanager sends the zero time (year 1) while an alert fires.
    .filter(|t| t.timestamp() > 0);

    let key = identity.incident_key(&alert.labels, &starts_at.to_rfc3339_opts(SecondsFormat::AutoSi, true));
    Ok(AlertEvent {
        incident_key: key,
        alert: Some(Alert {
            status: alert.status.clone(),
            labels: alert.labels.clone().into_iter().collect(),
            annotations: alert.annotations.clone().into_iter().collect(),
            starts_at: Some(timestamp(starts_at)),
            ends_at: ends_at.map(timestamp),
            generator_url: alert.generator_url.clone(),
            fingerprint: alert.fingerprint.clone(),
        }),
        source: "alertmanager".into(),
        receiver: webhook.receiver.clone(),
        group_key: webhook.group_key.clone(),
        external_url: webhook.external_url.clone(),
        truncated_alerts: webhook.truncated_alerts,
        received_at: Some(timestamp(received_at)),
    })
}

/// A free-text field within `max_field_len`.
fn check_len(field: String, value: &str, limits: &Limits) -> Result<(), RequestError> {
    if value.len() > limits.max_field_len {
        return Err(RequestError::invalid(
            field,
            format!(
                "is {} bytes, more than the limit of {}",
                value.len(),
                limits.max_field_len
            ),
        ));
    }
    Ok(())
}

/// The checks every alert passes, whichever way it came: status, label count and sizes, an
/// `alertname`, and a `service` that can stand in a subject, a path and a branch name.
pub fn check_alert(
    index: usize,
    status: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    limits: &Limits,
) -> Result<(), RequestError> {
    let field = |name: &str| format!("alerts[{index}].{name}");
    if status != "firing" && status != "resolved" {
        return Err(RequestError::invalid(
            field("status"),
            format!("must be \"firing\" or \"resolved\", got {status:?}"),
        ));
    }
    if labels.is_empty() {
        return Err(RequestError::invalid(field("labels"), "is empty"));
    }
    if labels.len() > limits.max_labels {
        return Err(RequestError::invalid(
            field("labels"),
            format!(
                "has {} labels, more than the limit of {}",
                labels.len(),
                limits.max_labels
            ),
        ));
    }
    if annotations.len() > limits.max_labels {
        return Err(RequestError::invalid(
            field("annotations"),
            format!(
                "has {} annotations, more than the limit of {}",
                annotations.len(),
                limits.max_labels
            ),
        ));
    }
    for (kind, map, max_value_len) in [
        ("labels", labels, limits.max_label_value_len),
        ("annotations", annotations, limits.max_annotation_value_len),
    ] {
        for (name, value) in map {
            if name.is_empty() || name.len() > 256 {
                return Err(RequestError::invalid(
                    field(kind),
                    "has a name that is empty or longer than 256 bytes",
                ));
            }
            if value.len() > max_value_len {
                return Err(RequestError::invalid(
                    field(&format!("{kind}.{name}")),
                    format!("is {} bytes, more than the limit of {max_value_len}", value.len()),
                ));
            }
        }
    }
    let annotation_bytes: usize = annotations.iter().map(|(name, value)| name.len() + value.len()).sum();
    if annotation_bytes > limits.max_annotations_bytes {
        return Err(RequestError::invalid(
            field("annotations"),
            format!(
                "hold {annotation_bytes} bytes, more than the limit of {}",
                limits.max_annotations_bytes
            ),
        ));
    }
    if labels.get("alertname").is_none_or(|v| v.is_empty()) {
        return Err(RequestError::invalid(field("labels.alertname"), "is missing"));
    }
    if labels.get("service").is_some_and(|service| !is_dns1123_label(service)) {
        return Err(RequestError::invalid(
            field("labels.service"),
            "must be a DNS-1123 label (lowercase letters, digits and '-', at most 63)",
        ));
    }
    Ok(())
}

/// Validates an alert that came over gRPC and turns it into an [`AlertEvent`].
pub fn from_proto(
    index: usize,
    alert: &Alert,
    source: &str,
    limits: &Limits,
    identity: &incident::Identity,
    received_at: DateTime<Utc>,
) -> Result<AlertEvent, RequestError> {
    let labels: BTreeMap<String, String> = alert.labels.clone().into_iter().collect();
    let annotations: BTreeMap<String, String> = alert.annotations.clone().into_iter().collect();
    check_alert(index, &alert.status, &labels, &annotations, limits)?;
    check_len(format!("alerts[{index}].generator_url"), &alert.generator_url, limits)?;
    check_len(format!("alerts[{index}].fingerprint"), &alert.fingerprint, limits)?;
    let starts_at = alert
        .starts_at
        .as_ref()
        .and_then(selfheal_proto::time::datetime)
        .ok_or_else(|| RequestError::invalid(format!("alerts[{index}].starts_at"), "is missing or out of range"))?;
    let key = identity.incident_key(&labels, &starts_at.to_rfc3339_opts(SecondsFormat::AutoSi, true));
    Ok(AlertEvent {
        incident_key: key,
        alert: Some(alert.clone()),
        source: if source.is_empty() {
            "grpc".into()
        } else {
            source.into()
        },
        received_at: Some(timestamp(received_at)),
        ..Default::default()
    })
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../../../shared/fixtures/alertmanager-0.25/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
    }

    fn events(name: &str) -> Vec<AlertEvent> {
        let webhook = parse(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let events = to_events(&webhook, &Limits::default(), &incident::Identity::default(), Utc::now())
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert!(events.refused.is_empty(), "{name}: {:?}", events.refused);
        events.accepted
    }

    #[test]
    fn every_fixture_parses() {
        for (name, count, status, truncated) in [
            ("01-firing-1alerts.json", 1, "firing", 0),
            ("02-firing-1alerts.json", 1, "firing", 0),
            ("03-resolved-1alerts.json", 1, "resolved", 0),
            ("04-firing-1alerts.json", 1, "firing", 0),
            ("05-firing-3alerts-truncated.json", 3, "firing", 1),
            ("06-resolved-3alerts-truncated.json", 3, "resolved", 1),
        ] {
            let events = events(name);
            assert_eq!(events.len(), count, "{name}");
            for event in &events {
                let alert = event.alert.as_ref().expect("alert");
                assert_eq!(alert.status, status, "{name}");
                assert_eq!(event.truncated_alerts, truncated, "{name}");
                assert_eq!(
                    alert.ends_at.is_some(),
                    status == "resolved",
                    "{name}: zero endsAt is unset"
                );
                assert_eq!(event.incident_key.len(), 16);
            }
        }
    }

    #[test]
    fn resolved_body_names_the_incidents_its_firing_body_opened() {
        let key = |name| events(name).into_iter().map(|e| e.incident_key).collect::<Vec<_>>();
        assert_eq!(key("02-firing-1alerts.json"), key("03-resolved-1alerts.json"));
        assert_eq!(
            key("05-firing-3alerts-truncated.json"),
            key("06-resolved-3alerts-truncated.json")
        );
        assert_ne!(
            key("02-firing-1alerts.json"),
            key("05-firing-3alerts-truncated.json"),
            "a new startsAt is a new incident"
        );
        assert_ne!(key("01-firing-1alerts.json"), key("04-firing-1alerts.json"));
    }

    #[test]
    fn refusals_name_the_field() {
        let cases: [(&[u8], &str); 7] = [
            (b"{", "body"),
            (b"{\"version\":\"4\",\"status\":\"firing\",\"alerts\":[{\"status\":\"firing\",\"startsAt\":\"2026-01-01T00:00:00Z\"}]}", "alerts[0]"),
            (b"{\"version\":\"4\",\"status\":\"firing\",\"alerts\":[{\"status\":\"firing\",\"labels\":{\"alertname\":1},\"startsAt\":\"2026-01-01T00:00:00Z\"}]}", "alerts[0].labels.alertname"),
            (b"{\"version\":\"4\",\"status\":\"firing\",\"alerts\":[]}", "alerts"),
            (b"{\"version\":\"4\",\"status\":\"firing\",\"alerts\":[{\"status\":\"firing\",\"labels\":{\"alertname\":\"A\",\"service\":\"../etc\"},\"startsAt\":\"2026-01-01T00:00:00Z\"}]}", "alerts[0].labels.service"),
            (b"{\"version\":\"4\",\"status\":\"firing\",\"alerts\":[{\"status\":\"firing\",\"labels\":{\"alertname\":\"A\"},\"startsAt\":\"yesterday\"}]}", "alerts[0].startsAt"),
            (b"{\"version\":\"4\",\"status\":\"firing\",\"alerts\":[{\"status\":\"up\",\"labels\":{\"alertname\":\"A\"},\"startsAt\":\"2026-01-01T00:00:00Z\"}]}", "alerts[0].status"),
        ];
        for (body, field) in cases {
            let result =
                parse(body).and_then(|w| to_events(&w, &Limits::default(), &incident::Identity::default(), Utc::now()));
            let error = result.expect_err(field);
            assert!(
                error.field().starts_with(field),
                "expected field {field}, got {error:?}"
            );
        }
        let invalid_utf8 = parse(b"{\"version\":\"4\xff\"}").expect_err("utf-8");
        assert_eq!(invalid_utf8.field(), "body");
    }

    #[test]
    fn annotations_have_a_longer_limit_than_labels() {
        let body = |labels: &str, annotations: &str| {
            format!(
                "{{\"version\":\"4\",\"status\":\"firing\",\"alerts\":[{{\"status\":\"firing\",\
                 \"labels\":{{\"alertname\":\"A\"{labels}}},\"annotations\":{{\"description\":\"{annotations}\"}},\
                 \"startsAt\":\"2026-01-01T00:00:00Z\"}}]}}"
            )
        };
        let check = |body: String| {
            parse(body.as_bytes())
                .and_then(|w| to_events(&w, &Limits::default(), &incident::Identity::default(), Utc::now()))
        };
        let limits = Limits::default();
        // A runbook-sized description is taken.
        let long = "d".repeat(limits.max_label_value_len * 4);
        let events = check(body("", &long)).expect("a 4 KiB description");
        assert_eq!((events.accepted.len(), events.refused.len()), (1, 0));
        // A label that long is not.
        let error = check(body(&format!(",\"pod\":\"{long}\""), "short")).expect_err("a 4 KiB label");
        assert_eq!(error.field(), "alerts[0].labels.pod");
        // Nor are annotations past their total.
        let many = (0..5)
            .map(|i| format!("\"a{i}\":\"{}\"", "d".repeat(limits.max_annotation_value_len)))
            .collect::<Vec<_>>()
            .join(",");
        let error = check(body("", "short").replace("\"description\":\"short\"", &many)).expect_err("80 KiB");
        assert_eq!(error.field(), "alerts[0].annotations");
        // Nor is an annotation past its own limit.
        let error = check(body("", &"d".repeat(limits.max_annotation_value_len + 1))).expect_err("too long");
        assert_eq!(error.field(), "alerts[0].annotations.description");
        assert!(error.to_string().contains("more than the limit"), "{error}");
    }

    #[test]
    fn every_free_text_field_has_a_limit() {
        let limits = Limits::default();
        let long = "u".repeat(limits.max_field_len + 1);
        let alert = |generator: &str, fingerprint: &str| {
            format!(
                "{{\"status\":\"firing\",\"labels\":{{\"alertname\":\"A\"}},\"startsAt\":\"2026-01-01T00:00:00Z\",\
                 \"generatorURL\":\"{generator}\",\"fingerprint\":\"{fingerprint}\"}}"
            )
        };
        let body = |top: &str, alerts: &[String]| {
            format!(
                "{{\"version\":\"4\",\"status\":\"firing\"{top},\"alerts\":[{}]}}",
                alerts.join(",")
            )
        };
        let events = |text: String| {
            parse(text.as_bytes()).and_then(|w| to_events(&w, &limits, &incident::Identity::default(), Utc::now()))
        };
        // An over-long generatorURL or fingerprint refuses that alert alone, naming the field.
        let taken = events(body(
            "",
            &[
                alert("http://prometheus/graph", "a1"),
                alert(&long, "a2"),
                alert("http://p", &long),
            ],
        ))
        .expect("the good alert is taken");
        assert_eq!(taken.accepted.len(), 1);
        let fields: Vec<_> = taken.refused.iter().map(RequestError::field).collect();
        assert_eq!(fields, ["alerts[1].generatorURL", "alerts[2].fingerprint"]);
        assert!(
            taken.refused[0].to_string().contains("more than the limit of 4096"),
            "{}",
            taken.refused[0]
        );
        // An over-long field of the body refuses the body.
        for field in ["groupKey", "externalURL", "receiver"] {
            let error =
                events(body(&format!(",\"{field}\":\"{long}\""), &[alert("http://p", "a1")])).expect_err("refused");
            assert_eq!(error.field(), field);
        }
    }

    #[test]
    fn a_bad_alert_is_refused_alone() {
        let alert = |service: &str, at: &str| {
            format!(
                "{{\"status\":\"firing\",\"labels\":{{\"alertname\":\"A\",\"service\":\"{service}\"}},\
                 \"startsAt\":\"{at}\"}}"
            )
        };
        let body = format!(
            "{{\"version\":\"4\",\"status\":\"firing\",\"alerts\":[{},{},{}]}}",
            alert("checkout", "2026-01-01T00:00:00Z"),
            alert("Checkout_API", "2026-01-01T00:00:00Z"),
            alert("cart", "not a time"),
        );
        let webhook = parse(body.as_bytes()).expect("parses");
        let events = to_events(&webhook, &Limits::default(), &incident::Identity::default(), Utc::now())
            .expect("the good alert is taken");
        let services: Vec<_> = events
            .accepted
            .iter()
            .filter_map(|e| e.alert.as_ref()?.labels.get("service").cloned())
            .collect();
        assert_eq!(services, ["checkout"]);
        let fields: Vec<_> = events.refused.iter().map(RequestError::field).collect();
        assert_eq!(fields, ["alerts[1].labels.service", "alerts[2].startsAt"]);

        // A problem of the body as a whole still refuses it.
        let body = body.replace("\"version\":\"4\"", "\"version\":\"3\"");
        let error = parse(body.as_bytes())
            .and_then(|w| to_events(&w, &Limits::default(), &incident::Identity::default(), Utc::now()))
            .expect_err("version 3");
        assert_eq!(error.field(), "version");
    }

    #[test]
    fn dns1123() {
        for ok in ["checkout", "a", "a-1", "0abc"] {
            assert!(is_dns1123_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a/b", "a b", &"a".repeat(64)] {
            assert!(!is_dns1123_label(bad), "{bad}");
        }
    }
}
