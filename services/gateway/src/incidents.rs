//! Incidents in a JetStream key-value bucket: firing → resolved, first and last seen, how often the
//! source reported it, its last payload.
//!
//! The bucket, not the stream's duplicate window, decides whether an alert is news: a repeat
//! notification hours later (Alertmanager's `repeat_interval`) finds its incident and is absorbed,
//! and a resolved alert closes exactly the incident its key names. Every write is a
//! compare-and-set on the revision read, so gateways of an HA pair never overwrite each other.
//!
//! The alert is published *before* the incident is written: a crash in between leaves no
//! incident, so the retry publishes again (the stream drops the duplicate id) and then writes it.

use std::{collections::BTreeMap, future::Future};

use chrono::{DateTime, SecondsFormat, Utc};
use selfheal_bus::kv::{KvError, SharedKeyValue};
use selfheal_proto::v1::AlertEvent;
use serde::{Deserialize, Serialize};

/// The bucket's name.
pub const BUCKET: &str = "selfheal_incidents";

/// Where an incident is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IncidentState {
    Firing,
    Resolved,
}

/// One incident, as stored (JSON, so `nats kv get` shows it plainly).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub key: String,
    pub state: IncidentState,
    pub alertname: String,
    pub service: String,
    pub labels: BTreeMap<String, String>,
    pub starts_at: String,
    pub ends_at: Option<String>,
    /// When a gateway first received it (RFC 3339).
    pub first_seen: String,
    pub last_seen: String,
    pub resolved_at: Option<String>,
    /// How many notifications of it arrived (retries, repeats and HA copies included).
    pub notifications: u64,
    /// A notification that carried it said the source cut alerts from its group.
    pub truncated: bool,
    pub fingerprint: String,
    /// The trace its first notification started.
    pub trace_id: String,
    /// That trace's W3C `traceparent`, so the resolution joins the incident's trace.
    #[serde(default)]
    pub traceparent: String,
    /// The alert as last received.
    pub last_payload: serde_json::Value,
}

/// What one alert did to its incident.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new incident, published.
    Opened,
    /// The incident resolved, published.
    Resolved,
    /// Nothing new: a retry, a repeat or the other half of an HA pair.
    Duplicate,
}

/// Why an alert could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum IncidentError {
    #[error("publishing the alert failed: {0}")]
    Publish(String),
    #[error("incident store: {0}")]
    Store(String),
    #[error("incident {0} is corrupt: {1}")]
    Corrupt(String, String),
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn timestamp_text(t: Option<&selfheal_proto::Timestamp>) -> Option<String> {
    t.and_then(selfheal_proto::time::datetime)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// The incidents bucket.
#[derive(Clone)]
pub struct Incidents {
    kv: SharedKeyValue,
}

impl Incidents {
    pub fn new(kv: SharedKeyValue) -> Self {
        Self { kv }
    }

    /// The incident `key`, if known.
    pub async fn get(&self, key: &str) -> Result<Option<Incident>, IncidentError> {
        let Some(entry) = self
            .kv
            .get(key)
            .await
            .map_err(|e| IncidentError::Store(e.to_string()))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&entry.value)
            .map(Some)
            .map_err(|e| IncidentError::Corrupt(key.into(), e.to_string()))
    }

    /// Every incident (for listing; the bucket is bounded by its max age).
    pub async fn all(&self) -> Result<Vec<Incident>, IncidentError> {
        let mut keys = self.kv.keys().await.map_err(|e| IncidentError::Store(e.to_string()))?;
        keys.sort();
        let mut incidents = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(incident) = self.get(&key).await? {
                incidents.push(incident);
            }
        }
        Ok(incidents)
    }

    /// Records `event`. `publish` is awaited when the alert is news (a new incident, or its
    /// resolution), before the incident is written; it must be safe to call more than once.
    pub async fn record<F, Fut>(
        &self,
        event: &AlertEvent,
        trace_id: &str,
        traceparent: &str,
        now: DateTime<Utc>,
        publish: F,
    ) -> Result<Outcome, IncidentError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let alert = event.alert.clone().unwrap_or_default();
        let resolved = alert.status == "resolved";
        let key = event.incident_key.as_str();
        let payload = serde_json::json!({
            "status": alert.status,
            "labels": alert.labels,
            "annotations": alert.annotations,
            "startsAt": timestamp_text(alert.starts_at.as_ref()),
            "endsAt": timestamp_text(alert.ends_at.as_ref()),
            "generatorURL": alert.generator_url,
            "fingerprint": alert.fingerprint,
            "groupKey": event.group_key,
            "receiver": event.receiver,
        });
        // Bounded: each lost compare-and-set means another writer made progress.
        for _ in 0..16 {
            let current = self
                .kv
                .get(key)
                .await
                .map_err(|e| IncidentError::Store(e.to_string()))?;
            match current {
                None => {
                    publish().await.map_err(IncidentError::Publish)?;
                    let incident = Incident {
                        key: key.to_string(),
                        state: if resolved {
                            IncidentState::Resolved
                        } else {
                            IncidentState::Firing
                        },
                        alertname: alert.labels.get("alertname").cloned().unwrap_or_default(),
                        service: alert.labels.get("service").cloned().unwrap_or_default(),
                        labels: alert.labels.clone().into_iter().collect(),
                        starts_at: timestamp_text(alert.starts_at.as_ref()).unwrap_or_default(),
                        ends_at: timestamp_text(alert.ends_at.as_ref()),
                        first_seen: rfc3339(now),
                        last_seen: rfc3339(now),
                        resolved_at: resolved.then(|| rfc3339(now)),
                        notifications: 1,
                        truncated: event.truncated_alerts > 0,
                        fingerprint: alert.fingerprint.clone(),
                        trace_id: trace_id.to_string(),
                        traceparent: traceparent.to_string(),
                        last_payload: payload.clone(),
                    };
                    let value = serde_json::to_vec(&incident).map_err(|e| IncidentError::Store(e.to_string()))?;
                    match self.kv.create(key, value.into()).await {
                        Ok(_) => return Ok(if resolved { Outcome::Resolved } else { Outcome::Opened }),
                        Err(KvError::Exists(_)) => continue,
                        Err(error) => return Err(IncidentError::Store(error.to_string())),
                    }
                }
                Some(entry) => {
                    let mut incident: Incident = serde_json::from_slice(&entry.value)
                        .map_err(|e| IncidentError::Corrupt(key.into(), e.to_string()))?;
                    let resolves = resolved && incident.state == IncidentState::Firing;
                    if resolves {
                        publish().await.map_err(IncidentError::Publish)?;
                        incident.state = IncidentState::Resolved;
                        incident.resolved_at = Some(rfc3339(now));
                        incident.ends_at = timestamp_text(alert.ends_at.as_ref());
                    }
                    incident.last_seen = rfc3339(now);
                    incident.notifications += 1;
                    incident.truncated |= event.truncated_alerts > 0;
                    incident.last_payload = payload.clone();
                    let value = serde_json::to_vec(&incident).map_err(|e| IncidentError::Store(e.to_string()))?;
                    match self.kv.update(key, value.into(), entry.revision).await {
                        Ok(_) => {
                            return Ok(if resolves {
                                Outcome::Resolved
                            } else {
                                Outcome::Duplicate
                            });
                        }
                        Err(KvError::Conflict { .. }) => continue,
                        Err(error) => return Err(IncidentError::Store(error.to_string())),
                    }
                }
            }
        }
        Err(IncidentError::Store(format!("incident {key} kept changing; retry")))
    }
}
