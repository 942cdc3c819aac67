#!/usr/bin/env bash
# Run a command against a live API: serve it on a free port with a throw-away SQLite
# database and a first admin, wait for /health, run the command with the server's
# address in the environment, fail if the server logged a traceback, and stop the
# server whatever happens. The client test suites (dashboards, typescript) share it.
#
# The command sees API_BASE_URL (http://127.0.0.1:PORT), API_URL (its /api/v1),
# ADMIN_EMAIL, ADMIN_PASSWORD and SERVER_SECRET_KEY (the key the server signs with).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

work="$(mktemp -d)"
server=""
stop() {
  if [ -n "$server" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap stop EXIT

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export API_BASE_URL="http://127.0.0.1:${port}"
export API_URL="${API_BASE_URL}/api/v1"
export ADMIN_EMAIL=client-admin@example.com ADMIN_PASSWORD=Tidal-Beacon-42
SERVER_SECRET_KEY="$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
export SERVER_SECRET_KEY

# `env` rather than export: the server's settings stay out of the test process.
(
  cd "$repo"
  exec env DATABASE_URL="sqlite:///${work}/clients.db" STAGE=test BCRYPT_ROUNDS=4 \
    SECRET_KEY="$SERVER_SECRET_KEY" RATE_LIMIT_ENABLED=false \
    FIRST_ADMIN_EMAIL="$ADMIN_EMAIL" FIRST_ADMIN_PASSWORD="$ADMIN_PASSWORD" \
    uv run backend serve --port "$port"
) >"$work/server.log" 2>&1 &
server=$!

for _ in $(seq 1 60); do
  curl -sf "$API_BASE_URL/health" >/dev/null && break
  kill -0 "$server" 2>/dev/null || break  # it died: no point waiting
  sleep 0.5
done
if ! curl -sf "$API_BASE_URL/health" >/dev/null; then
  echo "The server did not become healthy:" >&2
  cat "$work/server.log" >&2
  exit 1
fi

status=0
"$@" || status=$?
if grep -q Traceback "$work/server.log"; then
  echo "The server logged a traceback:" >&2
  cat "$work/server.log" >&2
  status=1
fi
exit "$status"
