//! The lifecycle of each remediation, and its verification: a fix is only a fix once the alert
//! resolves.
//!
//! Every remediation is recorded in the KV bucket `selfheal_remediations` (keyed by incident),
//! with its latest event: `opened` (waiting for approval), `merged`, `failed`, `rejected`, then
//! `verified` or `escalated`. Moves are compare-and-set and only forward (see [`allowed`]); a
//! rejected remediation stays rejected however often its decision is redelivered.
//! A resolved alert for that incident turns it `verified`, with the MTTR (the alert's
//! `startsAt` → its `endsAt`) and the time to remediate (`startsAt` → merge). A remediation still
//! unresolved when its verification window ends turns `escalated`. Both transitions are a
//! compare-and-set, so replicas and redeliveries produce each event once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use prost::Message as _;
use selfheal_bus::kv::{KvError, SharedKeyValue};
use selfheal_proto::{
    Timestamp,
    time::timestamp as stamp,
    v1::{AlertEvent, RemediationEvent, RemediationState},
};
use serde::{Deserialize, Serialize};

/// The bucket's name.
pub const BUCKET: &str = "selfheal_remediations";

/// One remediation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub incident: String,
    /// Stored by name: `opened`, `merged`, `failed`, `rejected`, `verified` or `escalated`.
    #[serde(with = "state_name")]
    pub state: RemediationState,
    /// The subject token the remediation events go to.
    pub subject_service: String,
    /// When it was merged (None before; stored as RFC 3339, `""` before).
    #[serde(default, with = "time_or_empty")]
    pub merged_at: Option<DateTime<Utc>>,
    /// When the alert must have resolved by (None before the merge).
    #[serde(default, with = "time_or_empty")]
    pub verify_by: Option<DateTime<Utc>>,
    /// When the record last changed.
    #[serde(default, with = "time_or_empty")]
    pub updated_at: Option<DateTime<Utc>>,
    /// The latest event, protobuf-encoded: the base of the events that follow.
    pub event: Vec<u8>,
}

impl Record {
    /// The latest event.
    pub fn event(&self) -> Result<RemediationEvent, VerifyError> {
        RemediationEvent::decode(self.event.as_slice()).map_err(|source| VerifyError::Event {
            incident: self.incident.clone(),
            source,
        })
    }
}

/// A [`RemediationState`] as its name ([`selfheal_proto::names::state`]) in the stored record.
mod state_name {
    use selfheal_proto::{names, v1::RemediationState};
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(state: &RemediationState, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(names::state(*state))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<RemediationState, D::Error> {
        let name = String::deserialize(deserializer)?;
        names::parse_state(&name).ok_or_else(|| D::Error::custom(format!("{name:?} is not a remediation state")))
    }
}

/// A time as RFC 3339 with milliseconds in the stored record, and `""` for none (as records
/// written before these were typed hold it).
mod time_or_empty {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(time: &Option<DateTime<Utc>>, serializer: S) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => serializer.serialize_str(&time.to_rfc3339_opts(SecondsFormat::Millis, true)),
            None => serializer.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.is_empty() {
            return Ok(None);
        }
        DateTime::parse_from_rfc3339(&text)
            .map(|time| Some(time.with_timezone(&Utc)))
            .map_err(|e| D::Error::custom(format!("{text:?} is not an RFC 3339 time: {e}")))
    }
}

/// Whether a remediation may move from `from` (None: not recorded yet) to `to`.
pub fn allowed(from: Option<RemediationState>, to: RemediationState) -> bool {
    use RemediationState::{Escalated, Failed, Merged, Opened, Rejected, Verified};
    let may_start = matches!(to, Opened | Merged | Failed | Rejected);
    match from {
        None => may_start,
        // Waiting or failed: anything may still happen to it.
        Some(Opened | Failed) => may_start,
        Some(Merged) => matches!(to, Verified | Escalated),
        // rejected, verified, escalated: final.
        Some(_) => false,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The bucket could not be read or written.
    #[error("remediation store: {0}")]
    Store(#[source] KvError),
    /// A record that is not one (it fails the request, never the whole sweep).
    #[error("remediation record of {incident} is unreadable: {source}")]
    Record {
        incident: String,
        #[source]
        source: serde_json::Error,
    },
    /// A record's event that does not decode.
    #[error("remediation event of {incident} is unreadable: {source}")]
    Event {
        incident: String,
        #[source]
        source: prost::DecodeError,
    },
    /// Others kept writing the record (compare-and-set lost every time); trying later may pass.
    #[error("remediation {0} kept changing; retry")]
    Contended(String),
}

fn time(t: Option<&Timestamp>) -> Option<DateTime<Utc>> {
    t.and_then(selfheal_proto::time::datetime)
}

/// Records merges, verifies on resolution, escalates on timeout.
#[derive(Clone)]
pub struct Verifier {
    kv: SharedKeyValue,
    window: Duration,
    /// Per action (`rollback`, `scale`, `restart`): a window other than the default.
    windows: std::collections::HashMap<String, Duration>,
}

impl Verifier {
    pub fn new(kv: SharedKeyValue, window: Duration) -> Self {
        Self {
            kv,
            window,
            windows: Default::default(),
        }
    }

    /// Gives `action` its own verification window.
    pub fn with_window(mut self, action: &str, window: Duration) -> Self {
        self.windows.insert(action.to_string(), window);
        self
    }

    fn window_for(&self, action: &str) -> Duration {
        self.windows.get(action).copied().unwrap_or(self.window)
    }

    fn store_error(error: KvError) -> VerifyError {
        VerifyError::Store(error)
    }

    /// The remediation of `incident`, if selfheal acted on it.
    pub async fn get(&self, incident: &str) -> Result<Option<Record>, VerifyError> {
        let Some(entry) = self.kv.get(incident).await.map_err(Self::store_error)? else {
            return Ok(None);
        };
        serde_json::from_slice(&entry.value)
            .map(Some)
            .map_err(|source| VerifyError::Record {
                incident: incident.to_owned(),
                source,
            })
    }

    /// Every remediation, most recently updated first. Reads the whole bucket.
    pub async fn list(&self) -> Result<Vec<Record>, VerifyError> {
        let mut records = Vec::new();
        for key in self.kv.keys().await.map_err(Self::store_error)? {
            if let Some(record) = self.get(&key).await? {
                records.push(record);
            }
        }
        records.sort_by_key(|record| std::cmp::Reverse(record.updated_at));
        Ok(records)
    }

    /// Records `event` as the remediation's latest state when the move is [`allowed`]; returns
    /// the state the remediation is in afterwards (the event's, or the one that kept it from
    /// moving: a redelivered `merged` finds `merged`, a late decision finds `rejected`).
    pub async fn record(
        &self,
        event: &RemediationEvent,
        subject_service: &str,
        now: DateTime<Utc>,
    ) -> Result<RemediationState, VerifyError> {
        let to = event.state();
        for _ in 0..16 {
            let entry = self.kv.get(&event.incident_key).await.map_err(Self::store_error)?;
            let previous: Option<Record> = match &entry {
                Some(entry) => Some(
                    serde_json::from_slice(&entry.value).map_err(|source| VerifyError::Record {
                        incident: event.incident_key.clone(),
                        source,
                    })?,
                ),
                None => None,
            };
            let from = previous.as_ref().map(|r| r.state);
            if !allowed(from, to) {
                return Ok(from.unwrap_or(to));
            }
            let mut record = Record {
                incident: event.incident_key.clone(),
                state: to,
                subject_service: subject_service.into(),
                merged_at: None,
                verify_by: None,
                updated_at: Some(now),
                event: event.encode_to_vec(),
            };
            if to == RemediationState::Merged
                && let Some(opened) = previous
                    .as_ref()
                    .filter(|p| p.state == RemediationState::Opened)
                    .and_then(|p| p.updated_at)
            {
                // It waited for approval: how long, from the commit on its branch to the merge.
                metrics::histogram!(selfheal_telemetry::metrics::HOP_COMMIT_TO_MERGE)
                    .record((now - opened).num_milliseconds().max(0) as f64 / 1000.0);
            }
            if to == RemediationState::Merged {
                let window = chrono::Duration::from_std(self.window_for(selfheal_proto::names::action(event.action())))
                    .unwrap_or_else(|_| chrono::Duration::minutes(15));
                record.merged_at = Some(now);
                record.verify_by = Some(now + window);
            }
            let value = serde_json::to_vec(&record).map_err(|source| VerifyError::Record {
                incident: record.incident.clone(),
                source,
            })?;
            let written = match &entry {
                None => self.kv.create(&event.incident_key, value.into()).await,
                Some(entry) => self.kv.update(&event.incident_key, value.into(), entry.revision).await,
            };
            match written {
                Ok(_) => return Ok(to),
                Err(KvError::Exists(_) | KvError::Conflict { .. }) => continue,
                Err(error) => return Err(Self::store_error(error)),
            }
        }
        Err(VerifyError::Contended(event.incident_key.clone()))
    }

    /// Notes a merged remediation (once; a redelivery finds it recorded).
    pub async fn record_merged(
        &self,
        event: &RemediationEvent,
        subject_service: &str,
        now: DateTime<Utc>,
    ) -> Result<(), VerifyError> {
        self.record(event, subject_service, now).await.map(|_| ())
    }

    /// Moves the record for `incident` from `merged` to `state`, building the event with `finish`;
    /// `None` when there is no merged remediation to move (never merged, or already moved).
    async fn transition(
        &self,
        incident: &str,
        state: RemediationState,
        finish: impl Fn(&Record, &mut RemediationEvent),
    ) -> Result<Option<(String, RemediationEvent)>, VerifyError> {
        for _ in 0..16 {
            let Some(entry) = self.kv.get(incident).await.map_err(Self::store_error)? else {
                return Ok(None);
            };
            let mut record: Record = serde_json::from_slice(&entry.value).map_err(|source| VerifyError::Record {
                incident: incident.to_owned(),
                source,
            })?;
            if record.state != RemediationState::Merged {
                return Ok(None);
            }
            let mut event = record.event()?;
            event.set_state(state);
            finish(&record, &mut event);
            record.state = state;
            record.updated_at = Some(Utc::now());
            record.event = event.encode_to_vec();
            let value = serde_json::to_vec(&record).map_err(|source| VerifyError::Record {
                incident: record.incident.clone(),
                source,
            })?;
            match self.kv.update(incident, value.into(), entry.revision).await {
                Ok(_) => return Ok(Some((record.subject_service, event))),
                Err(KvError::Conflict { .. }) => continue,
                Err(error) => return Err(Self::store_error(error)),
            }
        }
        Err(VerifyError::Contended(incident.to_owned()))
    }

    /// A resolved alert: its merged remediation is verified, with MTTR from the alert's own times.
    pub async fn resolve(
        &self,
        alert: &AlertEvent,
        now: DateTime<Utc>,
    ) -> Result<Option<(String, RemediationEvent)>, VerifyError> {
        let inner = alert.alert.clone().unwrap_or_default();
        let started = time(inner.starts_at.as_ref());
        let resolved = time(inner.ends_at.as_ref())
            .or_else(|| time(alert.received_at.as_ref()))
            .unwrap_or(now);
        self.transition(&alert.incident_key, RemediationState::Verified, |record, event| {
            let merged = record.merged_at;
            if let Some(started) = started {
                event.mttr_seconds = (resolved - started).num_milliseconds() as f64 / 1000.0;
                if let Some(merged) = merged {
                    event.time_to_remediate_seconds = (merged - started).num_milliseconds() as f64 / 1000.0;
                }
            }
            event.at = Some(stamp(now));
            event.message = format!(
                "verified: the alert resolved {:.1}s after it started",
                event.mttr_seconds
            );
        })
        .await
    }

    /// Remediations whose verification window ended with the alert still firing: escalated.
    pub async fn escalate_overdue(&self, now: DateTime<Utc>) -> Result<Vec<(String, RemediationEvent)>, VerifyError> {
        let mut escalated = Vec::new();
        for (key, _) in self.overdue(now).await? {
            escalated.extend(self.escalate(&key, now, "").await?);
        }
        Ok(escalated)
    }

    /// Merged remediations past their window: (incident, the merged event). Nothing moves yet,
    /// so work done before [`Verifier::escalate`] (a revert) is redone after a crash.
    pub async fn overdue(&self, now: DateTime<Utc>) -> Result<Vec<(String, RemediationEvent)>, VerifyError> {
        let keys = self.kv.keys().await.map_err(Self::store_error)?;
        let mut overdue = Vec::new();
        for key in keys {
            let Some(entry) = self.kv.get(&key).await.map_err(Self::store_error)? else {
                continue;
            };
            let Ok(record) = serde_json::from_slice::<Record>(&entry.value) else {
                continue;
            };
            if record.state != RemediationState::Merged || record.verify_by.is_none_or(|by| by > now) {
                continue;
            }
            if let Ok(event) = record.event() {
                overdue.push((key, event));
            }
        }
        Ok(overdue)
    }

    /// Moves `incident` from merged to escalated; `note` is added to the message (a revert).
    pub async fn escalate(
        &self,
        incident: &str,
        now: DateTime<Utc>,
        note: &str,
    ) -> Result<Option<(String, RemediationEvent)>, VerifyError> {
        let windows = (self.window, self.windows.clone());
        self.transition(incident, RemediationState::Escalated, |_, event| {
            let window = windows
                .1
                .get(selfheal_proto::names::action(event.action()))
                .copied()
                .unwrap_or(windows.0);
            event.at = Some(stamp(now));
            event.message = format!(
                "escalated: the alert still fires {} after the fix was merged; a person must look{note}",
                humantime::format_duration(Duration::from_secs(window.as_secs()))
            );
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use selfheal_bus::kv::MemoryKeyValue;
    use selfheal_proto::v1::Alert;

    use super::*;

    /// A record written before its state and times were typed reads the same; one written now
    /// keeps the stored shape (state by name, RFC 3339 times, "" for none).
    #[test]
    fn records_keep_their_stored_shape() -> Result<(), serde_json::Error> {
        let old = r#"{"incident":"k1","state":"opened","subject_service":"cart","merged_at":"","verify_by":"","updated_at":"2026-11-22T10:00:00.000Z","event":[]}"#;
        let record: Record = serde_json::from_str(old)?;
        assert_eq!(record.state, RemediationState::Opened);
        assert_eq!((record.merged_at, record.verify_by), (None, None));
        assert_eq!(record.updated_at.map(|t| t.timestamp()), Some(1_795_341_600));
        assert_eq!(serde_json::to_string(&record)?, old);
        let unknown = old.replace("\"opened\"", "\"open\"");
        let error = serde_json::from_str::<Record>(&unknown)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("\"open\" is not a remediation state"), "{error}");
        Ok(())
    }

    fn merged(incident: &str) -> RemediationEvent {
        let mut event = RemediationEvent {
            incident_key: incident.into(),
            commit: "abc".into(),
            ..Default::default()
        };
        event.set_state(RemediationState::Merged);
        event
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).expect("time").with_timezone(&Utc)
    }

    #[tokio::test]
    async fn resolution_verifies_once_with_mttr_from_the_alert() -> Result<(), VerifyError> {
        let verifier = Verifier::new(Arc::new(MemoryKeyValue::default()), Duration::from_secs(600));
        verifier
            .record_merged(&merged("k1"), "checkout", at("2026-11-22T10:58:53.050Z"))
            .await?;
        verifier
            .record_merged(&merged("k1"), "checkout", at("2026-11-22T10:59:00Z"))
            .await?;
        let resolved = AlertEvent {
            incident_key: "k1".into(),
            alert: Some(Alert {
                status: "resolved".into(),
                starts_at: Some(stamp(at("2026-11-22T10:58:52.050Z"))),
                ends_at: Some(stamp(at("2026-11-22T10:59:07.050Z"))),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (service, event) = verifier.resolve(&resolved, Utc::now()).await?.expect("verified");
        assert_eq!(service, "checkout");
        assert_eq!(event.state(), RemediationState::Verified);
        assert_eq!(event.mttr_seconds, 15.0);
        assert_eq!(event.time_to_remediate_seconds, 1.0, "merge time is the first record's");
        assert!(
            verifier.resolve(&resolved, Utc::now()).await?.is_none(),
            "verified once"
        );
        let unknown = AlertEvent {
            incident_key: "other".into(),
            ..resolved
        };
        assert!(verifier.resolve(&unknown, Utc::now()).await?.is_none());
        Ok(())
    }

    #[tokio::test]
    async fn still_firing_after_the_window_escalates_once() -> Result<(), VerifyError> {
        let verifier = Verifier::new(Arc::new(MemoryKeyValue::default()), Duration::from_secs(600));
        let merged_at = at("2026-11-22T11:00:00Z");
        verifier.record_merged(&merged("k2"), "cart", merged_at).await?;
        assert!(
            verifier
                .escalate_overdue(merged_at + chrono::Duration::minutes(9))
                .await?
                .is_empty()
        );
        let escalated = verifier
            .escalate_overdue(merged_at + chrono::Duration::minutes(11))
            .await?;
        assert_eq!(escalated.len(), 1);
        assert_eq!(escalated[0].1.state(), RemediationState::Escalated);
        assert!(escalated[0].1.message.contains("10m"), "{}", escalated[0].1.message);
        assert!(
            verifier
                .escalate_overdue(merged_at + chrono::Duration::minutes(12))
                .await?
                .is_empty()
        );
        Ok(())
    }
}
