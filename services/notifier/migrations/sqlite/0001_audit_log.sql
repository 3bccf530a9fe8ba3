-- The audit log: one row per event (decision or remediation), append-only.
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- "decision.<incident>" or "remediation.<incident>.<state>": one row per event, however often
    -- the event is delivered.
    event_key TEXT NOT NULL UNIQUE,
    recorded_at TEXT NOT NULL,
    incident TEXT NOT NULL,
    service TEXT NOT NULL,
    kind TEXT NOT NULL,
    action TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    decision_json TEXT NOT NULL,
    -- A commit id or pull request URL.
    reference TEXT NOT NULL,
    -- NULL while the outcome is unknown.
    success INTEGER,
    trace_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_incident ON audit_log (incident);

-- Which events people were told about (kept apart so audit_log stays append-only).
CREATE TABLE IF NOT EXISTS notifications (
    event_key TEXT PRIMARY KEY,
    sent_at TEXT NOT NULL
);
