#!/usr/bin/env bash
# Drive the stock react-admin and Refine data providers against a live server: install
# the pinned packages, serve the API on a free port with a throw-away SQLite database,
# run `node --test`, and stop the server whatever happens.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

cd "$here"
if [ -f package-lock.json ]; then
  npm ci --no-audit --no-fund
else
  npm install --no-audit --no-fund
fi

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
base="http://127.0.0.1:${port}"
export API_URL="${base}/api/v1"
export ADMIN_EMAIL=dashboard-admin@example.com ADMIN_PASSWORD=Dashboard-Admin-1

# `env` rather than export: the server's settings stay out of the test process.
(
  cd "$repo"
  exec env DATABASE_URL="sqlite:///${work}/dashboards.db" STAGE=test BCRYPT_ROUNDS=4 \
    SECRET_KEY="$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')" \
    RATE_LIMIT_ENABLED=false \
    FIRST_ADMIN_EMAIL="$ADMIN_EMAIL" FIRST_ADMIN_PASSWORD="$ADMIN_PASSWORD" \
    uv run backend serve --port "$port"
) >"$work/server.log" 2>&1 &
server=$!

for _ in $(seq 1 60); do
  curl -sf "$base/health" >/dev/null && break
  kill -0 "$server" 2>/dev/null || break  # it died: no point waiting
  sleep 0.5
done
if ! curl -sf "$base/health" >/dev/null; then
  echo "The server did not become healthy:" >&2
  cat "$work/server.log" >&2
  exit 1
fi

status=0
node --test || status=$?
if grep -q Traceback "$work/server.log"; then
  echo "The server logged a traceback:" >&2
  cat "$work/server.log" >&2
  status=1
fi
exit "$status"
