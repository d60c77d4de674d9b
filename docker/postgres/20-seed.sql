-- Seed data for the compose stack, from the harness's own seed.sql (mounted at /cdc-sql).
-- The harness substitutes :customers, :seed and :seed_fraction textually; here psql
-- variables do it. psql leaves `:seed` inside quoted literals alone, so the generated ids
-- differ from a harness run with the same seed (they are still deterministic).
\set customers 1000
\set seed 42
\set seed_fraction 0.000042
\i /cdc-sql/seed.sql
