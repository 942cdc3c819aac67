#!/usr/bin/env bash
# Fail when openapi.json or src/schema.d.ts is not what the app generates today, so the
# committed client never drifts from the API.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

bash "$here/generate.sh" "$work"
stale=0
for file in openapi.json src/schema.d.ts; do
  if ! diff -u "$here/$file" "$work/$file" >"$work/diff" 2>&1; then
    echo "clients/typescript/$file is out of date with the API:" >&2
    head -n 40 "$work/diff" >&2
    stale=1
  fi
done
if [ "$stale" -ne 0 ]; then
  echo "Regenerate and commit it: (cd clients/typescript && npm ci && npm run generate)" >&2
  exit 1
fi
echo "clients/typescript is current with the API's OpenAPI document."
