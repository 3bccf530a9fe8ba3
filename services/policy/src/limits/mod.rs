//! Safety beyond policy: limits the service enforces whatever the policy says.
//!
//! * a kill switch (no automatic action at all), kept in its own bucket (`selfheal_control`)
//!   whose entries never expire: it stays on until somebody turns it off,
//! * per service: at most `per_service_max` actions in `per_service_window`, and a cooldown
//!   between two actions,
//! * overall: at most `global_max` actions in `global_window`.
//!
//! The counts live in a JetStream KV bucket (`selfheal_actions`), one key per service and one for
//! the whole installation, updated with compare-and-set, so several policy replicas deciding at
//! once never exceed a limit between them. A reservation is keyed by incident, so a redelivered
//! alert finds its reservation instead of taking a second one.

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use selfheal_bus::{
    coalesce::Coalesce,
    kv::{KvError, SharedKeyValue},
};
use serde::{Deserialize, Serialize};

/// The bucket's name.
pub const BUCKET: &str = "selfheal_actions";

/// The kill switch, shared with every service that acts (`selfheal_bus::control`): it lives in
/// its own bucket, whose entries never expire.
pub use selfheal_bus::control::{BUCKET as CONTROL_BUCKET, KILL_SWITCH_KEY, open as control_bucket};

/// Turns the runtime kill switch on or off; `kv` is [`CONTROL_BUCKET`].
pub async fn set_kill_switch(kv: &SharedKeyValue, on: bool) -> Result<(), LimitError> {
    selfheal_bus::control::set_kill_switch(kv, on)
        .await
        .map_err(LimitError::Store)
}

/// Whether the runtime kill switch is on; `kv` is [`CONTROL_BUCKET`].
pub async fn kill_switch_on(kv: &SharedKeyValue) -> Result<bool, LimitError> {
    selfheal_bus::control::kill_switch_on(kv)
        .await
        .map_err(LimitError::Store)
}

/// Before `selfheal_control` existed the kill switch was a key of [`BUCKET`], where it aged out.
/// A switch still on there, with none set in [`CONTROL_BUCKET`], is carried over, so that an
/// upgrade never turns it off. Says whether it carried one over.
pub async fn carry_over_kill_switch(actions: &SharedKeyValue, control: &SharedKeyValue) -> Result<bool, LimitError> {
    let store = LimitError::Store;
    let old = actions.get(KILL_SWITCH_KEY).await.map_err(store)?;
    if old.is_none_or(|entry| entry.value.as_ref() != b"on") {
        return Ok(false);
    }
    if control.get(KILL_SWITCH_KEY).await.map_err(store)?.is_some() {
        // Set in its new place since: that is the operator's word.
        return Ok(false);
    }
    match control.create(KILL_SWITCH_KEY, "on".into()).await {
        Ok(_) => Ok(true),
        Err(KvError::Exists(_)) => Ok(false),
        Err(error) => Err(store(error)),
    }
}

/// Why every action is refused while the kill switch is on.
const KILL_SWITCH_ON: &str = "the kill switch is on: selfheal takes no automatic action";

/// The limits.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// No automatic action at all: every decision that would change something escalates.
    pub kill_switch: bool,
    /// Most actions on one service within `per_service_window`.
    pub per_service_max: usize,
    /// The window `per_service_max` counts in.
    #[serde(with = "humantime_serde")]
    pub per_service_window: Duration,
    /// Least time between two actions on one service.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// Most actions overall within `global_window`.
    pub global_max: usize,
    /// The window `global_max` counts in.
    #[serde(with = "humantime_serde")]
    pub global_window: Duration,
    /// An alert (its name, on its service) that selfheal fixed — verified — and that fires again
    /// within this long after the fix is not fixed again by itself: it escalates, saying when it
    /// was fixed (a fix that must be repeated hides a cause). Zero: off.
    #[serde(with = "humantime_serde")]
    pub recently_fixed: Duration,
    /// Refuse a change while more than this many of the service's callers (`[dependents]`) have
    /// incidents firing: a wider incident is under way. Zero: off.
    pub max_firing_dependents: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            kill_switch: false,
            per_service_max: 2,
            per_service_window: Duration::from_secs(30 * 60),
            cooldown: Duration::ZERO,
            global_max: 20,
            global_window: Duration::from_secs(60 * 60),
            recently_fixed: Duration::from_secs(60 * 60),
            max_firing_dependents: 0,
        }
    }
}

/// One action taken (or reserved).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    pub incident: String,
    pub service: String,
    pub action: String,
    /// When; stored (and shown to the policy) as RFC 3339 with milliseconds. A record whose
    /// time does not parse makes its whole key unreadable: the limits fail closed.
    #[serde(with = "rfc3339_millis")]
    pub at: DateTime<Utc>,
    /// The alert's name (empty in records from before it was kept).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub alertname: String,
    /// How the action ended, once it has: `verified`, `escalated`, `failed`, `rejected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// When it ended so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome_at: Option<DateTime<Utc>>,
}

impl ActionRecord {
    /// Whether this record is a fix of `alertname` verified within `window` before `now`, and
    /// when it was verified.
    fn verified_fix_of(&self, alertname: &str, window: Duration, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let at = self.outcome_at?;
        (self.alertname == alertname
            && self.outcome.as_deref() == Some("verified")
            && (now - at).to_std().unwrap_or_default() < window)
            .then_some(at)
    }
}

/// A time as RFC 3339 with milliseconds, `2026-11-22T10:00:00.000Z`.
mod rfc3339_millis {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(time: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&time.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|time| time.with_timezone(&Utc))
            .map_err(|e| D::Error::custom(format!("at: {text:?} is not an RFC 3339 time: {e}")))
    }
}

impl ActionRecord {
    /// `action` on `service` for `incident`, at `now`.
    fn new(incident: &str, service: &str, action: &str, now: DateTime<Utc>) -> Self {
        Self {
            incident: incident.into(),
            service: service.into(),
            action: action.into(),
            at: now,
            alertname: String::new(),
            outcome: None,
            outcome_at: None,
        }
    }
}

/// Whether an action may go ahead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refused, with a reason that names the limit.
    Refused(String),
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum LimitError {
    /// The buckets could not be read or written; trying again later may pass.
    #[error("action history unavailable: {0}")]
    Store(#[from] KvError),
    /// A record could not be encoded (a bug).
    #[error("action record not encoded: {0}")]
    Encode(std::sync::Arc<serde_json::Error>),
    /// The reservation's batch went away before answering (the service is stopping).
    #[error("the reservation was dropped; retry")]
    Dropped,
    /// Other replicas kept writing the counts (every compare-and-set lost); retry.
    #[error("the action counts kept changing; retry")]
    Contended,
}

fn human(duration: Duration) -> String {
    humantime::format_duration(Duration::from_secs(duration.as_secs())).to_string()
}

/// What one key of [`BUCKET`] held when read.
#[derive(Clone, Debug, Default)]
struct Read {
    records: Vec<ActionRecord>,
    /// The revision read (None: no such key).
    revision: Option<u64>,
    /// Why the value is not a list of records, when it is not. Such a key fails closed: every
    /// reservation that counts in it is refused, and it is never overwritten.
    unreadable: Option<String>,
}

/// The records under `key` and the revision they were read at. A value that does not parse
/// (corrupt, or written by something else) is reported as unreadable, never read as empty: an
/// empty read would lift every limit it holds.
async fn read_records(kv: &SharedKeyValue, key: &str) -> Result<Read, LimitError> {
    match kv.get(key).await.map_err(LimitError::Store)? {
        None => Ok(Read::default()),
        Some(entry) => match serde_json::from_slice(&entry.value) {
            Ok(records) => Ok(Read {
                records,
                revision: Some(entry.revision),
                unreadable: None,
            }),
            Err(error) => {
                metrics::counter!(selfheal_telemetry::metrics::POLICY_LIMIT_RECORDS_UNREADABLE, "key" => key.to_string())
                    .increment(1);
                tracing::error!(key, bucket = BUCKET, error = %error, "a limits record does not parse; actions it counts are refused");
                Ok(Read {
                    records: Vec::new(),
                    revision: Some(entry.revision),
                    unreadable: Some(error.to_string()),
                })
            }
        },
    }
}

/// Enforces [`LimitsConfig`] over a shared bucket.
///
/// Reservations made at once on one replica are taken together: the first caller to find none
/// in work takes every one queued, reads each key once (all at once), decides them in the order
/// they came and writes each key once (compare-and-set; the services' keys at once, the global
/// key last). Without that, concurrent reservations would race for the global key and lose most
/// compare-and-sets to each other.
#[derive(Clone)]
pub struct Limiter {
    kv: SharedKeyValue,
    /// [`CONTROL_BUCKET`].
    control: SharedKeyValue,
    config: LimitsConfig,
    queue: std::sync::Arc<Queue>,
    /// History reads at once of one service share one round trip (a burst of alerts on one
    /// service asks for the same key).
    history_reads: std::sync::Arc<Coalesce<String, Result<Vec<ActionRecord>, LimitError>>>,
}

#[derive(Default)]
struct Queue {
    waiting: std::sync::Mutex<Vec<Request>>,
    /// Held by the caller taking the queued reservations.
    taking: tokio::sync::Mutex<()>,
}

/// One reservation asked for, and where its verdict goes.
struct Request {
    record: ActionRecord,
    now: DateTime<Utc>,
    verdict: tokio::sync::oneshot::Sender<Result<Verdict, LimitError>>,
}

/// What one key held when read, and what the batch makes of it.
struct Held {
    records: Vec<ActionRecord>,
    revision: Option<u64>,
    /// Why the value did not parse: nothing counts in it, nothing is written to it.
    unreadable: Option<String>,
    changed: bool,
}

enum Scope<'a> {
    Service(&'a str),
    Global,
}

impl Limiter {
    /// `kv` holds the reservations ([`BUCKET`]), `control` the kill switch ([`CONTROL_BUCKET`]).
    pub fn new(kv: SharedKeyValue, control: SharedKeyValue, config: LimitsConfig) -> Self {
        Self {
            kv,
            control,
            config,
            queue: Default::default(),
            history_reads: Default::default(),
        }
    }

    /// The limits enforced.
    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    fn key(scope: &Scope<'_>) -> String {
        match scope {
            Scope::Service(service) => format!("service.{service}"),
            Scope::Global => "global".into(),
        }
    }

    async fn read(&self, key: &str) -> Result<Read, LimitError> {
        read_records(&self.kv, key).await
    }

    async fn write(&self, key: &str, records: &[ActionRecord], revision: Option<u64>) -> Result<bool, LimitError> {
        let value = serde_json::to_vec(records).map_err(|e| LimitError::Encode(std::sync::Arc::new(e)))?;
        let written = match revision {
            None => self.kv.create(key, value.into()).await,
            Some(revision) => self.kv.update(key, value.into(), revision).await,
        };
        match written {
            Ok(_) => Ok(true),
            Err(KvError::Exists(_) | KvError::Conflict { .. }) => Ok(false),
            Err(error) => Err(LimitError::Store(error)),
        }
    }

    /// This service's actions within its window, oldest first (the policy's `input.history`).
    /// An unreadable record gives no history here; the reservation then refuses the action
    /// (see [`read_records`]).
    pub async fn history(&self, service: &str, now: DateTime<Utc>) -> Result<Vec<ActionRecord>, LimitError> {
        let (kv, key) = (self.kv.clone(), Self::key(&Scope::Service(service)));
        let records = self
            .history_reads
            .read(key.clone(), move || async move {
                Ok(read_records(&kv, &key).await?.records)
            })
            .await?;
        Ok(prune(records, now, self.keep()))
    }

    /// How long a service's records are kept: the longest of its window, the cooldown and
    /// `recently_fixed`.
    fn keep(&self) -> Duration {
        self.config
            .per_service_window
            .max(self.config.cooldown)
            .max(self.config.recently_fixed)
    }

    /// Why `alertname` is not to be fixed again by itself: when `history` (the service's) holds
    /// a fix of it verified within `recently_fixed`, that fix and when.
    pub fn recently_fixed(&self, history: &[ActionRecord], alertname: &str, now: DateTime<Utc>) -> Option<String> {
        if self.config.recently_fixed.is_zero() || alertname.is_empty() {
            return None;
        }
        let (record, at) = history
            .iter()
            .filter_map(|r| Some((r, r.verified_fix_of(alertname, self.config.recently_fixed, now)?)))
            .max_by_key(|(_, at)| *at)?;
        Some(format!(
            "recently fixed: {alertname} on {} was fixed by a {} (incident {}) verified at {}, {} ago, and fired again within {}: a fix that must be repeated hides a cause",
            record.service,
            record.action,
            record.incident,
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            human((now - at).to_std().unwrap_or_default()),
            human(self.config.recently_fixed)
        ))
    }

    /// Records how the action for `incident` on `service` ended (`verified`, `escalated`, …, at
    /// `at`), for `recently_fixed` and the policy's history. `false` when no record of it is
    /// kept (it aged out, or it was never an automatic action of this installation).
    pub async fn record_outcome(
        &self,
        service: &str,
        incident: &str,
        outcome: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, LimitError> {
        let key = Self::key(&Scope::Service(service));
        // Bounded: each lost compare-and-set means another writer made progress.
        for _ in 0..64 {
            let read = self.read(&key).await?;
            if read.unreadable.is_some() {
                return Ok(false);
            }
            let mut records = read.records;
            let Some(record) = records.iter_mut().find(|r| r.incident == incident) else {
                return Ok(false);
            };
            if record.outcome.as_deref() == Some(outcome) {
                return Ok(true);
            }
            record.outcome = Some(outcome.to_string());
            record.outcome_at = Some(at);
            if self.write(&key, &records, read.revision).await? {
                return Ok(true);
            }
        }
        Err(LimitError::Contended)
    }

    /// Whether the kill switch is on: in the config, or in `control` ([`CONTROL_BUCKET`] as the
    /// caller reads it; `Evaluate` from memory).
    pub async fn kill_switch_in(&self, control: &SharedKeyValue) -> Result<bool, LimitError> {
        Ok(self.config.kill_switch || kill_switch_on(control).await?)
    }

    /// What [`Self::reserve`] would answer now, reserving nothing (`Evaluate`'s "what would
    /// happen"), with the kill switch as the caller read it ([`Self::kill_switch_in`], read at
    /// once with the decision's other reads).
    pub async fn preview(
        &self,
        service: &str,
        incident: &str,
        action: &str,
        now: DateTime<Utc>,
        kill_switch: bool,
    ) -> Result<Verdict, LimitError> {
        if kill_switch {
            return Ok(Verdict::Refused(KILL_SWITCH_ON.into()));
        }
        let mut held = self
            .read_held([Self::key(&Scope::Service(service)), Self::key(&Scope::Global)].into())
            .await?;
        let record = ActionRecord::new(incident, service, action, now);
        Ok(self.take_both(&mut held, &record, now))
    }

    /// What each of `keys` holds, read at once.
    async fn read_held(&self, keys: std::collections::BTreeSet<String>) -> Result<BTreeMap<String, Held>, LimitError> {
        let read = futures::future::try_join_all(keys.iter().map(|key| self.read(key))).await?;
        Ok(keys
            .into_iter()
            .zip(read)
            .map(|(key, read)| {
                let held = Held {
                    records: read.records,
                    revision: read.revision,
                    unreadable: read.unreadable,
                    changed: false,
                };
                (key, held)
            })
            .collect())
    }

    /// A slot for `record` in its service, then overall, or the limit that refuses it.
    fn take_both(&self, held: &mut BTreeMap<String, Held>, record: &ActionRecord, now: DateTime<Utc>) -> Verdict {
        match self.take(&Scope::Service(&record.service), held, record, now) {
            Verdict::Allowed => self.take(&Scope::Global, held, record, now),
            refused => refused,
        }
    }

    /// Reserves an action for `incident` on `service`, or says which limit refuses it.
    pub async fn reserve(
        &self,
        service: &str,
        incident: &str,
        action: &str,
        now: DateTime<Utc>,
    ) -> Result<Verdict, LimitError> {
        self.reserve_for(service, incident, action, "", now).await
    }

    /// [`Self::reserve`], the record naming the alert (what `recently_fixed` looks for).
    pub async fn reserve_for(
        &self,
        service: &str,
        incident: &str,
        action: &str,
        alertname: &str,
        now: DateTime<Utc>,
    ) -> Result<Verdict, LimitError> {
        let (verdict, answer) = tokio::sync::oneshot::channel();
        let mut record = ActionRecord::new(incident, service, action, now);
        record.alertname = alertname.to_string();
        self.queue
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Request { record, now, verdict });
        let mut answer = answer;
        loop {
            let taking = self.queue.taking.lock().await;
            // Taken meanwhile by the caller before us?
            match answer.try_recv() {
                Ok(verdict) => return verdict,
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                    return Err(LimitError::Dropped);
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
            }
            let requests = std::mem::take(
                &mut *self
                    .queue
                    .waiting
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            if requests.is_empty() {
                // Ours is in the hands of a caller that has not answered yet.
                drop(taking);
                return answer.await.map_err(|_| LimitError::Dropped)?;
            }
            let records: Vec<(ActionRecord, DateTime<Utc>)> =
                requests.iter().map(|r| (r.record.clone(), r.now)).collect();
            let verdicts = self.reserve_all(&records).await;
            for (index, request) in requests.into_iter().enumerate() {
                let verdict = match &verdicts {
                    Ok(verdicts) => Ok(verdicts[index].clone()),
                    Err(error) => Err(error.clone()),
                };
                let _ = request.verdict.send(verdict);
            }
            drop(taking);
        }
    }

    /// Decides `requests` in order against the bucket, each key read and written once;
    /// everything again when another replica wrote a key meanwhile.
    async fn reserve_all(&self, requests: &[(ActionRecord, DateTime<Utc>)]) -> Result<Vec<Verdict>, LimitError> {
        // Bounded: each lost compare-and-set means another replica made progress.
        for _ in 0..64 {
            // Every key the batch touches, read at once, and the kill switch with them: one round
            // trip before anything is written.
            let keys: std::collections::BTreeSet<String> = requests
                .iter()
                .map(|(record, _)| Self::key(&Scope::Service(&record.service)))
                .chain([Self::key(&Scope::Global)])
                .collect();
            let kill_switch = async {
                if self.config.kill_switch {
                    return Ok(true);
                }
                kill_switch_on(&self.control).await
            };
            let (kill_switch, held) = futures::join!(kill_switch, self.read_held(keys));
            if kill_switch? {
                return Ok(requests
                    .iter()
                    .map(|_| Verdict::Refused(KILL_SWITCH_ON.into()))
                    .collect());
            }
            let mut held = held?;
            let mut verdicts = Vec::with_capacity(requests.len());
            for (record, now) in requests {
                let verdict = self.take_both(&mut held, record, *now);
                if verdict != Verdict::Allowed {
                    // Refused: no slot anywhere, including one an earlier round of this batch
                    // wrote before it lost a compare-and-set.
                    for key in [Self::key(&Scope::Service(&record.service)), Self::key(&Scope::Global)] {
                        if let Some(held) = held.get_mut(&key) {
                            let before = held.records.len();
                            held.records.retain(|r| r.incident != record.incident);
                            held.changed |= held.records.len() != before;
                        }
                    }
                }
                verdicts.push(verdict);
            }
            // The services' keys first (at once), the global one last: a round that loses a
            // compare-and-set on the way leaves fewer global slots taken, never more.
            let global = Self::key(&Scope::Global);
            let services = held
                .iter()
                .filter(|(key, held)| **key != global && held.changed)
                .map(|(key, held)| self.write(key, &held.records, held.revision));
            let written = futures::future::try_join_all(services).await?;
            if written.into_iter().any(|won| !won) {
                continue;
            }
            match held.get(&global) {
                Some(held) if held.changed && !self.write(&global, &held.records, held.revision).await? => continue,
                _ => return Ok(verdicts),
            }
        }
        Err(LimitError::Contended)
    }

    /// Takes a slot in `scope` for `record`, in `held`, or says which limit refuses it.
    fn take(
        &self,
        scope: &Scope<'_>,
        held: &mut BTreeMap<String, Held>,
        record: &ActionRecord,
        now: DateTime<Utc>,
    ) -> Verdict {
        let key = Self::key(scope);
        let (max, window) = match scope {
            Scope::Service(_) => (self.config.per_service_max, self.config.per_service_window),
            Scope::Global => (self.config.global_max, self.config.global_window),
        };
        let Some(held) = held.get_mut(&key) else {
            return Verdict::Refused(format!("{key} was not read"));
        };
        if let Some(reason) = &held.unreadable {
            return Verdict::Refused(format!(
                "limits record {key} in {BUCKET} is unreadable ({reason}): no automatic action counts in it until it is repaired or deleted"
            ));
        }
        // Entries past every window are dropped whenever the key is written anyway.
        let keep = match scope {
            Scope::Service(_) => self.keep(),
            Scope::Global => window.max(self.config.cooldown),
        };
        held.records = prune(std::mem::take(&mut held.records), now, keep);
        let records = &mut held.records;
        if records.iter().any(|r| r.incident == record.incident) {
            return Verdict::Allowed;
        }
        let in_window = records
            .iter()
            .filter(|r| (now - r.at).to_std().unwrap_or_default() < window)
            .count();
        if in_window >= max {
            return Verdict::Refused(match scope {
                Scope::Service(service) => format!(
                    "rate limit: {service} already had {in_window} automatic actions in the last {} (limit {max} per {})",
                    human(window),
                    human(window)
                ),
                Scope::Global => format!(
                    "global budget: {in_window} automatic actions in the last {} (limit {max} per {})",
                    human(window),
                    human(window)
                ),
            });
        }
        if let (Scope::Service(service), Some(last)) = (scope, records.iter().map(|r| r.at).max()) {
            let since = (now - last).to_std().unwrap_or_default();
            if since < self.config.cooldown {
                return Verdict::Refused(format!(
                    "cooldown: {service}'s last automatic action was {} ago (cooldown {})",
                    human(since),
                    human(self.config.cooldown)
                ));
            }
        }
        records.push(record.clone());
        held.changed = true;
        Verdict::Allowed
    }
}

fn prune(records: Vec<ActionRecord>, now: DateTime<Utc>, keep: Duration) -> Vec<ActionRecord> {
    records
        .into_iter()
        .filter(|r| (now - r.at).to_std().unwrap_or_default() < keep)
        .collect()
}

#[cfg(test)]
mod tests;
