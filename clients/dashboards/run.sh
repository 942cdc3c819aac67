#!/usr/bin/env bash
# Drive the stock react-admin and Refine data providers against a live server: install
# the pinned packages, then `node --test` against a throw-away server (../with-api.sh).
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
exec bash ../with-api.sh node --test
