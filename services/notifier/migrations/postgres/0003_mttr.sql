-- MTTR of verified remediations, for Stats.
ALTER TABLE audit_log ADD COLUMN IF NOT EXISTS mttr_seconds DOUBLE PRECISION;
