-- Queries of the change-stream relay's PostgreSQL administration (slot, publication,
-- stored offsets, pre-flight checks).  Loaded by name; run on an autocommit connection.

-- name: read_slot
-- The slot row, with the WAL it keeps from being recycled.
SELECT slot_name, plugin, database, active, restart_lsn::text,
       confirmed_flush_lsn::text, wal_status,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint
FROM pg_replication_slots WHERE slot_name = %(slot_name)s;

-- name: regclass
SELECT to_regclass(%(name)s);

-- name: wal_level
SHOW wal_level;

-- name: replication_role
SELECT current_user, rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user;

-- name: current_database
SELECT current_database();

-- name: current_wal_lsn
SELECT pg_current_wal_lsn()::text;

-- name: publication_exists
SELECT 1 FROM pg_publication WHERE pubname = %(name)s;

-- name: open_writers
-- Sessions holding an xid: creating a logical slot waits for every one of them to end.
SELECT pid, datname, state, (now() - xact_start)::text
FROM pg_stat_activity
WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
ORDER BY xact_start
LIMIT 5;

-- name: set_statement_timeout
SELECT set_config('statement_timeout', %(ms)s, false);

-- name: create_slot
SELECT pg_create_logical_replication_slot(%(slot_name)s, 'pgoutput');

-- name: drop_slot
SELECT pg_drop_replication_slot(%(slot_name)s);
