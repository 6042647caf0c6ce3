#!/usr/bin/env bash
# Make sure the local PostgreSQL and Redis the tests use are up, and that
# PostgreSQL runs with wal_level=logical (needed by the Debezium CDC relay).
# Only touches services on loopback; safe to run repeatedly.
set -euo pipefail

PGHOST=${PGHOST:-127.0.0.1}
export PGHOST
export PGUSER=${PGUSER:-postgres}

pg_cluster_ctl() {
  local version
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$version" ]; then
    echo "error: no PostgreSQL cluster under /etc/postgresql; install PostgreSQL 15 or set PERSONALIZATION_TEST_PG_URL" >&2
    exit 1
  fi
  pg_ctlcluster --skip-systemctl-redirect "$version" main "$1"
}

if ! pg_isready -h "$PGHOST" -q; then
  echo "starting PostgreSQL"
  pg_cluster_ctl start
  for _ in $(seq 1 30); do pg_isready -h "$PGHOST" -q && break; sleep 1; done
fi

if [ "$(psql -Atc 'SHOW wal_level')" != "logical" ]; then
  echo "setting wal_level=logical (restarts PostgreSQL)"
  psql -qc "ALTER SYSTEM SET wal_level = logical"
  pg_cluster_ctl restart
  for _ in $(seq 1 30); do pg_isready -h "$PGHOST" -q && break; sleep 1; done
fi

# A replication slot left behind by a killed run keeps every WAL segment until the disk is full
# (seen here: 64 GB); past this much retained WAL PostgreSQL invalidates such a slot instead
# (a relay on it then stops with its lost-slot message naming the fix).
if [ "$(psql -Atc 'SHOW max_slot_wal_keep_size')" = "-1" ]; then
  psql -qc "ALTER SYSTEM SET max_slot_wal_keep_size = '8GB'"
  psql -qAtc "SELECT pg_reload_conf()" >/dev/null
fi

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 30); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.5; done
fi
echo "services: PostgreSQL $(psql -Atc 'SHOW server_version') (wal_level=$(psql -Atc 'SHOW wal_level')), Redis $(redis-cli info server | awk -F: '/redis_version/ {print $2}' | tr -d '\r')"
