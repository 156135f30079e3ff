-- Chain version per row (audit/chain.rs): rows that existed before this migration read as
-- version 1 and keep the v1 hash rule; ADD COLUMN with a constant default rewrites no row
-- (SQLite keeps the default in the schema) and fires no trigger. The agent writes 2.
ALTER TABLE audit_log ADD COLUMN version INTEGER NOT NULL DEFAULT 1 CHECK (version IN (1, 2));
