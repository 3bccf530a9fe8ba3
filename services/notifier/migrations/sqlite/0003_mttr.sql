-- MTTR of verified remediations, for Stats.
ALTER TABLE audit_log ADD COLUMN mttr_seconds REAL;
