#!/usr/bin/env bash
# Write openapi.json (the API's document with every setting at its default, built from
# the app without a server: `backend openapi --defaults`) and src/schema.d.ts, its
# types by openapi-typescript. Into this folder, or into the folder given (check.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="$(cd "${1:-$here}" && pwd)"

mkdir -p "$out/src"
(cd "$repo" && uv run --quiet backend openapi --defaults) >"$out/openapi.json.new"
mv "$out/openapi.json.new" "$out/openapi.json"
cd "$here"
npx --no-install openapi-typescript "$out/openapi.json" --output "$out/src/schema.d.ts"
