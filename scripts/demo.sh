#!/usr/bin/env bash
# `make demo`: the end-to-end story on embedded SQLite (config/embedded.toml).
# PII encryption stays on. The key comes from the environment; when none is set, a key for
# this machine's demo database is generated once into .ccvault/ (git-ignored, never committed)
# so that a second `make demo` can read what the first one wrote.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .ccvault
# the demo's database stays in this clone (.ccvault/vault.db), not in ~/.local/share/ccvault
export CCVAULT_DATA_DIR="${CCVAULT_DATA_DIR:-$PWD/.ccvault}"
if [ -z "${PROFILE_PII_ENCRYPTION_KEY:-}" ]; then
  if [ ! -s .ccvault/demo.key ]; then
    (umask 077 && .venv/bin/ccvault keygen demo > .ccvault/demo.key)
  fi
  PROFILE_PII_ENCRYPTION_KEY="$(cat .ccvault/demo.key)"
  export PROFILE_PII_ENCRYPTION_KEY
fi
.venv/bin/ccvault providers
.venv/bin/ccvault --config config/embedded.toml demo
