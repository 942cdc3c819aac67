#!/usr/bin/env bash
# The TypeScript client's tests against a live server: install the pinned packages,
# check the generated types are current (check.sh), then compile and run `node --test`
# against a throw-away server (../with-api.sh; the tests sign an expired copy of a real
# access token with its SERVER_SECRET_KEY: see test/client.test.ts).
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
bash check.sh
exec bash ../with-api.sh npm test
