#!/usr/bin/env bash
# The client package's tests: install (npm ci), build (tsc), type-check, then the
# node:test suites against the real bridge binary (and headless Chromium when present,
# the system's chromium driven by playwright-core: no browser is ever downloaded).
#
# The bridge binary: as scripts/bridge-bin finds it (build it first: `cargo build`;
# scripts/test's `cargo test` does).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
REPO="$(cd ../.. && pwd)"

if [[ ! -d node_modules || package-lock.json -nt node_modules ]]; then
  npm ci --no-audit --no-fund --loglevel=error
  touch node_modules
fi

SWITCHYARD_BIN="$("$REPO/scripts/bridge-bin")" || { echo "clients/js: cannot run without the bridge binary" >&2; exit 1; }
export SWITCHYARD_BIN

# The browser test needs Debian's chromium (scripts/test installs it). Alone, this script
# skips that test without it, unless SWITCHYARD_REQUIRE_BROWSER=1 (as scripts/test sets).
if ! command -v chromium >/dev/null 2>&1 && [[ -z "${CHROMIUM_BIN:-}" ]]; then
  if [[ "${SWITCHYARD_REQUIRE_BROWSER:-0}" = 1 ]]; then
    echo "clients/js: the browser test needs chromium on PATH (Debian: sudo apt-get install chromium)" >&2
    exit 1
  fi
  echo "clients/js: no chromium on PATH: the browser test is skipped (Debian: sudo apt-get install chromium)"
fi

rm -rf dist
npx tsc -p tsconfig.json
npx tsc -p tsconfig.json --noEmit
npx tsc -p test/tsconfig.json

# What `npm publish` would ship, installed into an empty project and imported by name
# (its `exports` and types), without socket.io-client (an optional peer).
pack="$(mktemp -d)"
trap 'rm -rf "$pack"' EXIT
npm pack --silent --pack-destination "$pack" >/dev/null
mkdir "$pack/app"
( cd "$pack/app" && echo '{"name":"app","private":true,"type":"module"}' >package.json &&
  npm install --silent --no-audit --no-fund "$pack"/switchyard-client-*.tgz &&
  test -f node_modules/@switchyard/client/dist/index.d.ts &&
  test ! -e node_modules/socket.io-client &&
  node -e 'import("@switchyard/client").then((c) => { if (typeof c.stream !== "function" || typeof c.migratingClient !== "function") process.exit(1); })' ) ||
  { echo "clients/js: the packed package does not install or import" >&2; exit 1; }
echo "clients/js: the packed package installs and imports by name"

node --test --test-reporter=spec "$@" test/*.test.mjs
