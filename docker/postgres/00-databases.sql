-- Runs first in the `app` database (POSTGRES_DB): the sink's PostgreSQL target database,
-- as the harness creates it.
CREATE DATABASE sink;
