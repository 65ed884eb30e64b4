#!/usr/bin/env bash
# Start the machine's PostgreSQL and Redis if they are down; fail (never skip) if they stay down.
set -u
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432; }
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; }

if ! pg_up; then
  echo "PostgreSQL is down; starting it"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
fi
if ! redis_up; then
  echo "Redis is down; starting it"
  mkdir -p /var/lib/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis || true
fi
# PgBouncer for the transaction-pooler tests (providers/postgres/tests/test_pgbouncer.py run a
# private one; they skip, saying why, where it cannot be installed). Never started as a service.
if ! command -v pgbouncer >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  { apt-get install -y -qq pgbouncer || { apt-get update -qq && apt-get install -y -qq pgbouncer; }; } \
    >/dev/null 2>&1 || echo "pgbouncer could not be installed: its tests will skip"
fi
# promtool for the metrics and alert-rule checks (core/tests/test_observability.py: the test id
# says whether promtool or the Python parser checked). Only the tool is used; no Prometheus
# server is started.
if ! command -v promtool >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  { apt-get install -y -qq --no-install-recommends prometheus \
      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; }; } \
    >/dev/null 2>&1 || echo "promtool could not be installed: the Python parser checks the metrics"
fi
for _ in $(seq 1 60); do
  pg_up && redis_up && exit 0
  sleep 0.5
done
pg_up || echo "ERROR: PostgreSQL on 127.0.0.1:5432 cannot be reached" >&2
redis_up || echo "ERROR: Redis on 127.0.0.1:6379 cannot be reached" >&2
exit 1
