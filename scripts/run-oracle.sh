#!/usr/bin/env bash
# Starts the oracle with the web app on the default model, installing what is missing.
#
#   scripts/run-oracle.sh                  serve the default model
#   scripts/run-oracle.sh --FLAG ...       serve the default model with these flags of `oracle serve`
#   scripts/run-oracle.sh ARGS...          run the oracle with these arguments instead
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh
setup_main rust
ensure_model
say "building the oracle (release)"
cargo build --locked --release -p oracle
# The web app (the page and the scout's model worker, two wasm bundles): rebuilt
# when anything it is made of is newer than the last build.
if [ ! -f webapp/dist/index.html ] || [ -n "$(find webapp scout-wasm shared-model shared-proto \
        Cargo.toml Cargo.lock trunk.toml -newer webapp/dist/index.html \
        -not -path 'webapp/dist*' -print -quit)" ]; then
    say "building the web app (trunk, release wasm; minutes the first time)"
    TRUNK_OFFLINE=true trunk build --config trunk.toml
fi
if [ "$#" -eq 0 ] || [[ "$1" == --* ]]; then
    set -- serve --model "$SHARD_MODELS_DIR/$DEFAULT_MODEL" "$@"
fi
exec "${CARGO_TARGET_DIR:-target}/release/oracle" "$@"
