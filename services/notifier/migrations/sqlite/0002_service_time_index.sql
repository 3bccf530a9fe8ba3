-- Audit queries filter by service and time.
CREATE INDEX IF NOT EXISTS audit_log_service_time ON audit_log (service, recorded_at);
