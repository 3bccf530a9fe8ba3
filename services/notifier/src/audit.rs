//! The audit log: every decision and remediation event, once, with its trace id.

use std::str::FromStr;

use async_trait::async_trait;
use serde::Serialize;
use sqlx::{
    Row,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions},
};

/// One audit row.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditEntry {
    /// `decision.<incident>` or `remediation.<incident>.<state>`.
    pub event_key: String,
    /// RFC 3339.
    pub recorded_at: String,
    pub incident: String,
    pub service: String,
    /// `decision` or `remediation`.
    pub kind: String,
    pub action: String,
    /// The decision's approval, or the remediation's state.
    pub state: String,
    pub reason: String,
    /// The decision, as JSON.
    pub decision_json: String,
    /// Commit id or pull request URL.
    pub reference: String,
    pub success: Option<bool>,
    pub trace_id: String,
}

/// What [`AuditStore::record`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// False when the event was already recorded (a redelivery).
    pub inserted: bool,
    /// Whether people were already told about it.
    pub notified: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit database {0}")]
    Database(String),
}

impl From<sqlx::Error> for AuditError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error.to_string())
    }
}

/// Where audit rows go.
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// Records `entry` unless its event key is already there.
    async fn record(&self, entry: &AuditEntry) -> Result<Recorded, AuditError>;
    /// Whether people were told about `event_key` (per channel: `<event key>#<channel>`).
    async fn is_notified(&self, event_key: &str) -> Result<bool, AuditError>;
    /// Notes that people were told about `event_key`.
    async fn mark_notified(&self, event_key: &str, at: &str) -> Result<(), AuditError>;
    /// Rows for `incident` (all when None), oldest first.
    async fn rows(&self, incident: Option<&str>) -> Result<Vec<AuditEntry>, AuditError>;
    /// Ok when the database answers.
    async fn ping(&self) -> Result<(), AuditError>;
}

/// The audit log in SQLite.
#[derive(Clone, Debug)]
pub struct SqlAuditStore {
    pool: SqlitePool,
}

impl SqlAuditStore {
    /// Opens (creating if missing) the database at `url` and applies the migrations.
    pub async fn connect(url: &str) -> Result<Self, AuditError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| AuditError::Database(e.to_string()))?;
        Ok(Self { pool })
    }
}

#[async_trait]
impl AuditStore for SqlAuditStore {
    async fn record(&self, entry: &AuditEntry) -> Result<Recorded, AuditError> {
        let inserted = sqlx::query(
            "INSERT INTO audit_log (event_key, recorded_at, incident, service, kind, action, state, reason, \
             decision_json, reference, success, trace_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (event_key) DO NOTHING",
        )
        .bind(&entry.event_key)
        .bind(&entry.recorded_at)
        .bind(&entry.incident)
        .bind(&entry.service)
        .bind(&entry.kind)
        .bind(&entry.action)
        .bind(&entry.state)
        .bind(&entry.reason)
        .bind(&entry.decision_json)
        .bind(&entry.reference)
        .bind(entry.success)
        .bind(&entry.trace_id)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        let notified = sqlx::query("SELECT 1 FROM notifications WHERE event_key = ?")
            .bind(&entry.event_key)
            .fetch_optional(&self.pool)
            .await?
            .is_some();
        Ok(Recorded { inserted, notified })
    }

    async fn is_notified(&self, event_key: &str) -> Result<bool, AuditError> {
        Ok(sqlx::query("SELECT 1 FROM notifications WHERE event_key = ?")
            .bind(event_key)
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    async fn mark_notified(&self, event_key: &str, at: &str) -> Result<(), AuditError> {
        sqlx::query("INSERT INTO notifications (event_key, sent_at) VALUES (?, ?) ON CONFLICT (event_key) DO NOTHING")
            .bind(event_key)
            .bind(at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn rows(&self, incident: Option<&str>) -> Result<Vec<AuditEntry>, AuditError> {
        let rows = sqlx::query(
            "SELECT event_key, recorded_at, incident, service, kind, action, state, reason, decision_json, \
             reference, success, trace_id FROM audit_log WHERE (? IS NULL OR incident = ?) ORDER BY id",
        )
        .bind(incident)
        .bind(incident)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(AuditEntry {
                    event_key: row.try_get("event_key")?,
                    recorded_at: row.try_get("recorded_at")?,
                    incident: row.try_get("incident")?,
                    service: row.try_get("service")?,
                    kind: row.try_get("kind")?,
                    action: row.try_get("action")?,
                    state: row.try_get("state")?,
                    reason: row.try_get("reason")?,
                    decision_json: row.try_get("decision_json")?,
                    reference: row.try_get("reference")?,
                    success: row.try_get("success")?,
                    trace_id: row.try_get("trace_id")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    async fn ping(&self) -> Result<(), AuditError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str) -> AuditEntry {
        AuditEntry {
            event_key: key.into(),
            recorded_at: "2026-11-22T10:58:53Z".into(),
            incident: "abc".into(),
            service: "checkout".into(),
            kind: "decision".into(),
            action: "rollback".into(),
            state: "auto".into(),
            reason: "because".into(),
            decision_json: "{}".into(),
            reference: String::new(),
            success: None,
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        }
    }

    #[tokio::test]
    async fn records_once_and_remembers_notification() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("audit.db").display());
        let store = SqlAuditStore::connect(&url).await?;
        assert_eq!(
            store.record(&entry("decision.abc")).await?,
            Recorded {
                inserted: true,
                notified: false
            }
        );
        assert_eq!(
            store.record(&entry("decision.abc")).await?,
            Recorded {
                inserted: false,
                notified: false
            }
        );
        store.mark_notified("decision.abc", "2026-11-22T10:58:54Z").await?;
        assert_eq!(
            store.record(&entry("decision.abc")).await?,
            Recorded {
                inserted: false,
                notified: true
            }
        );
        // Reopening applies migrations again without harm and keeps the rows.
        drop(store);
        let store = SqlAuditStore::connect(&url).await?;
        assert_eq!(store.rows(Some("abc")).await?, vec![entry("decision.abc")]);
        assert!(store.rows(Some("other")).await?.is_empty());
        Ok(())
    }
}
