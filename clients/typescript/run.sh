#!/usr/bin/env bash
# The TypeScript client's tests against a live server: install the pinned packages,
# check the generated types are current (check.sh), serve the API on a free port with a
# throw-away SQLite database, compile and run `node --test`, and stop the server
# whatever happens.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

cd "$here"
npm ci --no-audit --no-fund
bash check.sh

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
export ADMIN_EMAIL=client-admin@example.com ADMIN_PASSWORD=Client-Admin-Pass-1
# The tests sign an expired copy of a real access token with it: see test/client.test.ts.
SERVER_SECRET_KEY="$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
export SERVER_SECRET_KEY

# `env` rather than export: the server's settings stay out of the test process.
(
  cd "$repo"
  exec env DATABASE_URL="sqlite:///${work}/client.db" STAGE=test BCRYPT_ROUNDS=4 \
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
npm test || status=$?
if grep -q Traceback "$work/server.log"; then
  echo "The server logged a traceback:" >&2
  cat "$work/server.log" >&2
  status=1
fi
exit "$status"
