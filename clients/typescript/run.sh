#!/usr/bin/env bash
# The TypeScript client's CI (a step of .ci/run): install the pinned packages, check the
# generated types are current (check.sh), then against a throw-away server
# (../with-api.sh; the tests sign an expired copy of a real access token with its
# SERVER_SECRET_KEY: see test/client.test.ts):
# - `npm test`: build dist/ and run `node --test` on the tests, which import the
#   package by its name, so they test the built files;
# - consumers/run.sh: pack it, install the tarball into an empty project, type-check
#   the example of docs/typescript-client.md under moduleResolution nodenext and
#   bundler, run it with node, and install the folder as a link.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
bash check.sh
exec bash ../with-api.sh bash -c 'npm test && bash consumers/run.sh'
