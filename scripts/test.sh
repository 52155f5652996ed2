#!/usr/bin/env bash
# Runs every check CI runs: setup (a no-op when done), lint, types, then the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -m unit -x
#
# The suite talks to Redis on 127.0.0.1:6379 (Celery broker, rate limits) and Postgres on 127.0.0.1:5432
# (RLS, migrations, the outage test). A missing Redis is started here for the run (setup.sh installs it);
# without Postgres its tests skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! listening 6379 && command -v redis-server >/dev/null; then
  echo "==> starting a throwaway Redis on 127.0.0.1:6379 for the tests"
  pidfile=$(mktemp -u /tmp/voiceai-test-redis.XXXXXX)
  redis-server --port 6379 --bind 127.0.0.1 --save "" --appendonly no --daemonize yes --pidfile "$pidfile" >/dev/null
  trap 'kill "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null || true' EXIT
  for _ in $(seq 50); do listening 6379 && break; sleep 0.1; done
fi
listening 5432 || echo "==> no Postgres on 127.0.0.1:5432: its tests will be skipped"
echo "==> ruff"; .venv/bin/ruff check .
echo "==> mypy"; .venv/bin/mypy
echo "==> pytest"; .venv/bin/python -m pytest "$@"
