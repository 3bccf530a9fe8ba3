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
    /// `decision.<incident>`, `remediation.<incident>.<state>` or `dead_letter.<consumer>.<sequence>`.
    pub event_key: String,
    /// RFC 3339.
    pub recorded_at: String,
    pub incident: String,
    pub service: String,
    /// `decision`, `remediation` or `dead_letter`.
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
    /// Verified remediations: seconds from the alert's start to its resolution.
    pub mttr_seconds: Option<f64>,
}

/// Which rows a query wants; empty fields match everything.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub service: Option<String>,
    pub incident: Option<String>,
    pub kind: Option<String>,
}

/// What [`AuditStore::record`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// False when the event was already recorded (a redelivery).
    pub inserted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("audit database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
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
    /// Rows matching `filter` with an id above `after`, oldest first, at most `limit`: (id, row).
    async fn query(&self, filter: &Filter, after: i64, limit: i64) -> Result<Vec<(i64, AuditEntry)>, AuditError>;
    /// Ok when the database answers.
    async fn ping(&self) -> Result<(), AuditError>;
}

/// The audit log in SQLite (`sqlite://PATH`, created if missing) or PostgreSQL
/// (`postgres://…`), with the same schema from each database's migrations.
#[derive(Clone, Debug)]
pub struct SqlAuditStore {
    pool: Pool,
}

#[derive(Clone, Debug)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(sqlx::PgPool),
}

const INSERT: &str = "INSERT INTO audit_log (event_key, recorded_at, incident, service, kind, action, state, reason, \
    decision_json, reference, success, trace_id, mttr_seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
    ON CONFLICT (event_key) DO NOTHING";
const IS_NOTIFIED: &str = "SELECT 1 FROM notifications WHERE event_key = ?";
const MARK_NOTIFIED: &str =
    "INSERT INTO notifications (event_key, sent_at) VALUES (?, ?) ON CONFLICT (event_key) DO NOTHING";
const ROWS: &str = "SELECT event_key, recorded_at, incident, service, kind, action, state, reason, decision_json, \
    reference, success, trace_id, mttr_seconds FROM audit_log WHERE (CAST(? AS TEXT) IS NULL OR incident = ?) ORDER BY id";
const QUERY: &str = "SELECT id, event_key, recorded_at, incident, service, kind, action, state, reason, decision_json, \
    reference, success, trace_id, mttr_seconds FROM audit_log WHERE (CAST(? AS TEXT) IS NULL OR service = ?) \
    AND (CAST(? AS TEXT) IS NULL OR incident = ?) AND (CAST(? AS TEXT) IS NULL OR kind = ?) AND id > ? ORDER BY id LIMIT ?";

// The same statements with PostgreSQL's numbered placeholders.
const PG_INSERT: &str = "INSERT INTO audit_log (event_key, recorded_at, incident, service, kind, action, state, reason, \
    decision_json, reference, success, trace_id, mttr_seconds) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
    ON CONFLICT (event_key) DO NOTHING";
const PG_IS_NOTIFIED: &str = "SELECT 1 FROM notifications WHERE event_key = $1";
const PG_MARK_NOTIFIED: &str =
    "INSERT INTO notifications (event_key, sent_at) VALUES ($1, $2) ON CONFLICT (event_key) DO NOTHING";
const PG_ROWS: &str = "SELECT event_key, recorded_at, incident, service, kind, action, state, reason, decision_json, \
    reference, success, trace_id, mttr_seconds FROM audit_log WHERE (CAST($1 AS TEXT) IS NULL OR incident = $2) ORDER BY id";
const PG_QUERY: &str = "SELECT id, event_key, recorded_at, incident, service, kind, action, state, reason, decision_json, \
    reference, success, trace_id, mttr_seconds FROM audit_log WHERE (CAST($1 AS TEXT) IS NULL OR service = $2) \
    AND (CAST($3 AS TEXT) IS NULL OR incident = $4) AND (CAST($5 AS TEXT) IS NULL OR kind = $6) AND id > $7 ORDER BY id LIMIT $8";

/// Binds the same values to a query for either database.
macro_rules! bind_all {
    ($query:expr, $($value:expr),* $(,)?) => {{
        let query = $query;
        $(let query = query.bind($value);)*
        query
    }};
}

fn entry_from<R: Row>(row: &R) -> Result<AuditEntry, sqlx::Error>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<bool>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<f64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
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
        mttr_seconds: row.try_get("mttr_seconds")?,
    })
}

impl SqlAuditStore {
    /// Opens the database at `url` (`sqlite://…` or `postgres://…`) and applies the migrations.
    pub async fn connect(url: &str) -> Result<Self, AuditError> {
        let pool = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect(url)
                .await?;
            sqlx::migrate!("./migrations/postgres").run(&pool).await?;
            Pool::Postgres(pool)
        } else {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(std::time::Duration::from_secs(5));
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await?;
            sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
            Pool::Sqlite(pool)
        };
        Ok(Self { pool })
    }
}

#[async_trait]
impl AuditStore for SqlAuditStore {
    async fn record(&self, entry: &AuditEntry) -> Result<Recorded, AuditError> {
        let e = entry;
        let inserted = match &self.pool {
            Pool::Sqlite(pool) => bind_all!(
                sqlx::query(INSERT),
                &e.event_key,
                &e.recorded_at,
                &e.incident,
                &e.service,
                &e.kind,
                &e.action,
                &e.state,
                &e.reason,
                &e.decision_json,
                &e.reference,
                e.success,
                &e.trace_id,
                e.mttr_seconds
            )
            .execute(pool)
            .await?
            .rows_affected(),
            Pool::Postgres(pool) => bind_all!(
                sqlx::query(PG_INSERT),
                &e.event_key,
                &e.recorded_at,
                &e.incident,
                &e.service,
                &e.kind,
                &e.action,
                &e.state,
                &e.reason,
                &e.decision_json,
                &e.reference,
                e.success,
                &e.trace_id,
                e.mttr_seconds
            )
            .execute(pool)
            .await?
            .rows_affected(),
        } == 1;
        Ok(Recorded { inserted })
    }

    async fn is_notified(&self, event_key: &str) -> Result<bool, AuditError> {
        Ok(match &self.pool {
            Pool::Sqlite(pool) => sqlx::query(IS_NOTIFIED)
                .bind(event_key)
                .fetch_optional(pool)
                .await?
                .is_some(),
            Pool::Postgres(pool) => sqlx::query(PG_IS_NOTIFIED)
                .bind(event_key)
                .fetch_optional(pool)
                .await?
                .is_some(),
        })
    }

    async fn mark_notified(&self, event_key: &str, at: &str) -> Result<(), AuditError> {
        match &self.pool {
            Pool::Sqlite(pool) => {
                sqlx::query(MARK_NOTIFIED)
                    .bind(event_key)
                    .bind(at)
                    .execute(pool)
                    .await?;
            }
            Pool::Postgres(pool) => {
                sqlx::query(PG_MARK_NOTIFIED)
                    .bind(event_key)
                    .bind(at)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    async fn rows(&self, incident: Option<&str>) -> Result<Vec<AuditEntry>, AuditError> {
        let rows = match &self.pool {
            Pool::Sqlite(pool) => {
                let rows = sqlx::query(ROWS).bind(incident).bind(incident).fetch_all(pool).await?;
                rows.iter().map(entry_from).collect::<Result<Vec<_>, _>>()?
            }
            Pool::Postgres(pool) => {
                let rows = sqlx::query(PG_ROWS)
                    .bind(incident)
                    .bind(incident)
                    .fetch_all(pool)
                    .await?;
                rows.iter().map(entry_from).collect::<Result<Vec<_>, _>>()?
            }
        };
        Ok(rows)
    }

    async fn query(&self, filter: &Filter, after: i64, limit: i64) -> Result<Vec<(i64, AuditEntry)>, AuditError> {
        let (service, incident, kind) = (
            filter.service.as_deref(),
            filter.incident.as_deref(),
            filter.kind.as_deref(),
        );
        let rows = match &self.pool {
            Pool::Sqlite(pool) => {
                let rows = bind_all!(
                    sqlx::query(QUERY),
                    service,
                    service,
                    incident,
                    incident,
                    kind,
                    kind,
                    after,
                    limit
                )
                .fetch_all(pool)
                .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get("id")?, entry_from(r)?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            }
            Pool::Postgres(pool) => {
                let rows = bind_all!(
                    sqlx::query(PG_QUERY),
                    service,
                    service,
                    incident,
                    incident,
                    kind,
                    kind,
                    after,
                    limit
                )
                .fetch_all(pool)
                .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get("id")?, entry_from(r)?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            }
        };
        Ok(rows)
    }

    async fn ping(&self) -> Result<(), AuditError> {
        match &self.pool {
            Pool::Sqlite(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
            Pool::Postgres(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
        }
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
            mttr_seconds: None,
        }
    }

    /// The same behaviour on every database.
    async fn exercise(store: &SqlAuditStore) -> Result<(), Box<dyn std::error::Error>> {
        assert_eq!(store.record(&entry("decision.abc")).await?, Recorded { inserted: true });
        assert_eq!(
            store.record(&entry("decision.abc")).await?,
            Recorded { inserted: false }
        );
        store.mark_notified("decision.abc", "2026-11-22T10:58:54Z").await?;
        store.mark_notified("decision.abc", "2026-11-22T10:58:55Z").await?;
        assert_eq!(
            store.record(&entry("decision.abc")).await?,
            Recorded { inserted: false }
        );
        assert!(store.is_notified("decision.abc").await?);
        assert!(!store.is_notified("decision.abc#slack").await?);
        let verified = AuditEntry {
            event_key: "remediation.abc.verified".into(),
            kind: "remediation".into(),
            success: Some(true),
            mttr_seconds: Some(15.0),
            ..entry("x")
        };
        store.record(&verified).await?;
        assert_eq!(
            store.rows(Some("abc")).await?,
            vec![entry("decision.abc"), verified.clone()]
        );
        assert_eq!(store.rows(None).await?.len(), 2);
        assert!(store.rows(Some("other")).await?.is_empty());
        let remediations = Filter {
            service: Some("checkout".into()),
            kind: Some("remediation".into()),
            ..Default::default()
        };
        let found = store.query(&remediations, 0, 10).await?;
        assert_eq!(
            found.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
            vec![verified.clone()]
        );
        let (first_id, _) = store.query(&Filter::default(), 0, 1).await?[0].clone();
        let next = store.query(&Filter::default(), first_id, 10).await?;
        assert_eq!(next.len(), 1, "paging by id");
        store.ping().await?;
        Ok(())
    }

    #[tokio::test]
    async fn sqlite_records_once_and_remembers_notification() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("audit.db").display());
        exercise(&SqlAuditStore::connect(&url).await?).await?;
        // Reopening applies the migrations again without harm and keeps the rows.
        let store = SqlAuditStore::connect(&url).await?;
        assert_eq!(store.rows(Some("abc")).await?.len(), 2);
        Ok(())
    }

    /// On a real PostgreSQL: `SELFHEAL_TEST_POSTGRES_URL` names a server where the test may create
    /// a database (scripts/test starts Debian's PostgreSQL and sets it).
    #[tokio::test]
    async fn postgres_records_once_and_remembers_notification() -> Result<(), Box<dyn std::error::Error>> {
        let admin_url = std::env::var("SELFHEAL_TEST_POSTGRES_URL")
            .map_err(|_| "SELFHEAL_TEST_POSTGRES_URL is not set: run ./scripts/test, which starts PostgreSQL")?;
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&admin_url)
            .await?;
        let name = format!(
            "selfheal_test_{}_{}",
            std::process::id(),
            chrono::Utc::now().timestamp_micros()
        );
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await?;
        let url = match admin_url.split_once('?') {
            Some((base, query)) => format!("{}/{name}?{query}", base.rsplit_once('/').map_or(base, |(b, _)| b)),
            None => format!(
                "{}/{name}",
                admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(b, _)| b)
            ),
        };
        let result = async {
            exercise(&SqlAuditStore::connect(&url).await?).await?;
            let again = SqlAuditStore::connect(&url).await?;
            assert_eq!(again.rows(Some("abc")).await?.len(), 2);
            Ok::<(), Box<dyn std::error::Error>>(())
        }
        .await;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
            .execute(&admin)
            .await?;
        result
    }
}
