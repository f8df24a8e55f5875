#!/usr/bin/env bash
# The ops console in a real browser: installs playwright-core and socket.io-client
# (npm ci), then drives Debian's chromium (never a downloaded browser) against the real
# bridge binary, with traffic on both transports. Screenshots go to test-artifacts/.
#
# The bridge binary: $SWITCHYARD_BIN, else <cargo target dir>/debug/switchyard (from
# $CARGO_TARGET_DIR, else `cargo metadata`, else ../../target). Build it first
# (`cargo build`; scripts/test's `cargo test` does). Chromium: $CHROMIUM_BIN, else
# `chromium` on PATH (Debian: sudo apt-get install chromium); this test is never skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
REPO="$(cd ../.. && pwd)"

if [[ ! -d node_modules || package-lock.json -nt node_modules ]]; then
  npm ci --no-audit --no-fund --loglevel=error
  touch node_modules
fi

if [[ -z "${SWITCHYARD_BIN:-}" ]]; then
  target="${CARGO_TARGET_DIR:-}"
  if [[ -z "$target" ]] && command -v cargo >/dev/null 2>&1; then
    target="$(cd "$REPO" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
      node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{try{process.stdout.write(JSON.parse(s).target_directory)}catch{}})')"
  fi
  target="${target:-$REPO/target}"
  [[ "$target" = /* ]] || target="$REPO/$target"
  export SWITCHYARD_BIN="$target/debug/switchyard"
fi
if [[ ! -x "$SWITCHYARD_BIN" ]]; then
  echo "tests/console: the bridge binary is missing at $SWITCHYARD_BIN: run \`cargo build\` first (or set SWITCHYARD_BIN)" >&2
  exit 1
fi
if ! command -v chromium >/dev/null 2>&1 && [[ -z "${CHROMIUM_BIN:-}" ]]; then
  echo "tests/console: needs chromium on PATH or CHROMIUM_BIN (Debian: sudo apt-get install chromium)" >&2
  exit 1
fi

node --test --test-reporter=spec "$@" console.test.mjs
