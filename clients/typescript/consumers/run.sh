#!/usr/bin/env bash
# The package as a user gets it, against a live server (../run.sh runs this through
# ../../with-api.sh, after `npm test` built and tested dist/):
#
# 1. `npm pack` it, and `npm install` the tarball into an empty project, which fetches
#    openapi-fetch from the registry like any other install;
# 2. take the example from docs/typescript-client.md (its one ```ts example.ts block,
#    so the page cannot drift from what runs) and type-check it against the installed
#    package under moduleResolution nodenext (nodenext/) and bundler (bundler/);
# 3. run the same text with plain `node` (it is JavaScript too), its base URL and
#    credentials swapped for the test server's;
# 4. `npm install` the folder itself (a link to it, built) into a second empty project
#    and import it with node.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
package="$(cd "$here/.." && pwd)"
docs="$(cd "$package/../.." && pwd)/docs/typescript-client.md"
: "${API_BASE_URL:?run it through clients/with-api.sh}" "${ADMIN_EMAIL:?}" "${ADMIN_PASSWORD:?}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
npm_quiet=(--no-audit --no-fund --loglevel=error)

# The tarball of dist/ as built and tested (--ignore-scripts: no second build by prepack).
tarball="$work/$(cd "$package" && npm pack --ignore-scripts --pack-destination "$work" --loglevel=error | tail -n 1)"
echo "packed $(basename "$tarball"): $(tar -tzf "$tarball" | sort | tr '\n' ' ')"

mkdir "$work/project"
cd "$work/project"
printf '{ "name": "consumer", "private": true, "type": "module" }\n' >package.json
npm install "${npm_quiet[@]}" "$tarball"
# The consumers' own compiler: the versions clients/typescript pins.
version() { node -p "require('$package/node_modules/$1/package.json').version"; }
npm install "${npm_quiet[@]}" --save-dev "typescript@$(version typescript)" \
  "@types/node@$(version @types/node)"
echo "installed: $(node -p 'JSON.stringify({...require("./package.json").dependencies, ...require("./package.json").devDependencies})')"

# The example: the lines between "```ts example.ts" and the next "```", exactly once.
awk '/^```ts example\.ts$/ { inside = 1; found++; next }
     inside && /^```$/     { inside = 0; next }
     inside                { print }
     END { if (found != 1 || inside) exit 1 }' "$docs" >example.ts || {
  echo "$docs must hold exactly one closed \`\`\`ts example.ts block" >&2
  exit 1
}
grep -q '"users-api-client"' example.ts || {
  echo "the example in $docs does not import users-api-client" >&2
  exit 1
}

for resolution in nodenext bundler; do
  cp -r "$here/$resolution" .
  cp example.ts "$resolution/"
  npx --no-install tsc -p "$resolution"
  echo "the example type-checks under moduleResolution $resolution"
done

# The same text as JavaScript, pointed at the test server. Each literal must be there:
# a page that stops using one would otherwise run against the wrong server.
cp example.ts example.mjs
for swap in "http://127.0.0.1:8000=$API_BASE_URL" "admin@example.com=$ADMIN_EMAIL" \
  "Admin-Pass-1=$ADMIN_PASSWORD"; do
  from="\"${swap%%=*}\"" to="\"${swap#*=}\""
  grep -qF "$from" example.mjs || { echo "the example no longer says $from" >&2; exit 1; }
  FROM="$from" TO="$to" node -e '
    const fs = require("node:fs");
    const text = fs.readFileSync("example.mjs", "utf8");
    fs.writeFileSync("example.mjs", text.split(process.env.FROM).join(process.env.TO));'
done
node example.mjs | tee output.txt
# The example handles a 422 and rethrows anything else; check it got the 422.
grep -q '^422 ' output.txt || { echo "the example did not print the 422 it handles" >&2; exit 1; }
echo "the docs' example ran with node $(node --version)"

mkdir "$work/linked"
cd "$work/linked"
printf '{ "name": "linked", "private": true, "type": "module" }\n' >package.json
npm install "${npm_quiet[@]}" "$package"
test -L node_modules/users-api-client
node --input-type=module -e '
  import { createApiClient } from "users-api-client";
  const client = createApiClient({ baseUrl: process.env.API_BASE_URL });
  const { response } = await client.api.GET("/api/v1/users/me");
  if (response.status !== 401) throw new Error(`expected a 401, got ${response.status}`);'
echo "npm install <folder> links it, and node imports it"
