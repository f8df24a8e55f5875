#!/usr/bin/env bash
# The ops console in a real browser: installs playwright-core and socket.io-client
# (npm ci), then drives Debian's chromium (never a downloaded browser) against the real
# bridge binary, with traffic on both transports. Screenshots go to test-artifacts/.
#
# The bridge binary: as scripts/bridge-bin finds it (build it first: `cargo build`;
# scripts/test's `cargo test` does). Chromium: $CHROMIUM_BIN, else
# `chromium` on PATH (Debian: sudo apt-get install chromium); this test is never skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
REPO="$(cd ../.. && pwd)"

if [[ ! -d node_modules || package-lock.json -nt node_modules ]]; then
  npm ci --no-audit --no-fund --loglevel=error
  touch node_modules
fi

SWITCHYARD_BIN="$("$REPO/scripts/bridge-bin")" || { echo "tests/console: cannot run without the bridge binary" >&2; exit 1; }
export SWITCHYARD_BIN
if ! command -v chromium >/dev/null 2>&1 && [[ -z "${CHROMIUM_BIN:-}" ]]; then
  echo "tests/console: needs chromium on PATH or CHROMIUM_BIN (Debian: sudo apt-get install chromium)" >&2
  exit 1
fi

node --test --test-reporter=spec "$@" console.test.mjs
