#!/usr/bin/env bash
# The CPU comparison of docs/BENCHMARKS.md in one sitting: ours and llama.cpp's,
# alternately, on the same machine, model and thread count.
#
#   scripts/bench_cpu.sh [--threads N] [--rounds R] [--out DIR]
#
# Defaults: 2 threads, 3 rounds, DIR = bench-cpu-<UTC time> (a folder in the
# current directory). Each round runs `oracle bench` (prefill, decode, one
# pass over k = 1..16 new tokens, batched decode, memory, bandwidth), then
# llama.cpp's `llama-bench` (pp128 / tg128) and its k-token passes
# (docs/bench/llama_cpp_forward_k.py). After the rounds: decoding after
# prompts of ~730, ~1450 and ~2900 tokens (ours, and llama-bench at the same
# depth), our kernels alone (`cargo bench -p shared-kernels`: the matrix
# products and attention) and the serving comparison, `oracle serve`
# against `llama-server -np 16` under 1, 4 and 16 streamed greedy clients
# (scripts/bench_serve.py). DIR/report.md holds every table; DIR/*.log the
# raw output.
#
# Builds what it needs: `oracle` (release), and llama.cpp 0c1e57098 from the
# sources that PyPI's llama-cpp-python 0.3.36 vendors, with -march=native, in a
# venv with cmake and ninja under $LLAMA_CPP_DIR (default
# $SHARD_CACHE/llamacpp; ~10 minutes on 2 cores). The llama.cpp build is made
# again when the processor differs from the one it was built on.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh

threads=2
rounds=3
out=bench-cpu-$(date -u +%Y%m%dT%H%M%SZ)
while (($#)); do
    case $1 in
        --threads) threads=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) die "unknown argument '$1' (--threads N, --rounds R, --out DIR)" ;;
    esac
done
[[ $threads =~ ^[1-9][0-9]*$ ]] || die "--threads takes a positive number, not '$threads'"
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "--rounds takes a positive number, not '$rounds'"

LLAMA_CPP_PY=llama_cpp_python==0.3.36
LLAMA_CPP_DIR=${LLAMA_CPP_DIR:-$SHARD_CACHE/llamacpp}
llama_src=$LLAMA_CPP_DIR/llama_cpp_python-0.3.36
llama_bin=$llama_src/vendor/llama.cpp/build/bin

cpu_id() {
    { grep -m1 '^model name' /proc/cpuinfo; grep -m1 '^flags' /proc/cpuinfo; } | sha256sum | cut -c1-16
}

ensure_llama_cpp() {
    local venv=$LLAMA_CPP_DIR/venv
    if [[ -x $llama_bin/llama-bench && -x $llama_bin/llama-server && -f $llama_bin/libllama.so &&
        $(cat "$LLAMA_CPP_DIR/built-for" 2>/dev/null) == "$(cpu_id)" ]]; then
        return
    fi
    say "building llama.cpp ($LLAMA_CPP_PY's sources, -march=native) in $LLAMA_CPP_DIR"
    mkdir -p "$LLAMA_CPP_DIR"
    if [[ ! -x $venv/bin/cmake ]]; then
        python3 -m venv "$venv" >&2
        # cmake and ninja to build; the rest is what the llama_cpp package imports.
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            cmake ninja numpy typing_extensions diskcache jinja2 >&2
    fi
    if [[ ! -d $llama_src/vendor/llama.cpp ]]; then
        # The source archive itself, checked against the digest PyPI lists
        # (`pip download` would build its metadata, and cmake with it, first).
        python3 - "$LLAMA_CPP_DIR" <<'PY'
import hashlib, json, sys, urllib.request
name = "llama_cpp_python-0.3.36.tar.gz"
index = urllib.request.Request(
    "https://pypi.org/simple/llama-cpp-python/",
    headers={"Accept": "application/vnd.pypi.simple.v1+json"},
)
sdist = next(f for f in json.load(urllib.request.urlopen(index))["files"] if f["filename"] == name)
data = urllib.request.urlopen(sdist["url"]).read()
if hashlib.sha256(data).hexdigest() != sdist["hashes"]["sha256"]:
    sys.exit("llama-cpp-python's source archive does not match PyPI's SHA-256")
open(f"{sys.argv[1]}/{name}", "wb").write(data)
PY
        tar -xzf "$LLAMA_CPP_DIR/llama_cpp_python-0.3.36.tar.gz" -C "$LLAMA_CPP_DIR"
    fi
    local src=$llama_src/vendor/llama.cpp
    rm -rf "$src/build"
    PATH=$venv/bin:$PATH cmake -S "$src" -B "$src/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF >"$LLAMA_CPP_DIR/build.log" 2>&1 ||
        die "llama.cpp's cmake failed: $LLAMA_CPP_DIR/build.log"
    PATH=$venv/bin:$PATH cmake --build "$src/build" --target llama-bench llama-server llama \
        >>"$LLAMA_CPP_DIR/build.log" 2>&1 || die "llama.cpp's build failed: $LLAMA_CPP_DIR/build.log"
    cpu_id >"$LLAMA_CPP_DIR/built-for"
}

ensure_model
model=models/$DEFAULT_MODEL
ensure_llama_cpp
say "building oracle (release)"
cargo build --release --locked -p oracle >&2
oracle=${CARGO_TARGET_DIR:-target}/release/oracle
mkdir -p "$out"
rm -f "$out/ratios"
report=$out/report.md

llama() { LD_LIBRARY_PATH=$llama_bin "$@"; }
k_passes() {
    PYTHONPATH=$llama_src LLAMA_CPP_LIB_PATH=$llama_bin "$LLAMA_CPP_DIR/venv/bin/python" \
        docs/bench/llama_cpp_forward_k.py "$model" "$threads"
}
# The value of a row of `oracle bench`'s table, e.g. field "decode, 128 tokens".
field() { { grep -F "| $2" "$1" || true; } | head -1 | cut -d'|' -f3 | sed 's/^ *//; s/ *$//'; }
# llama-bench's tokens/s for a test (pp128 or tg128).
llama_tps() {
    awk -F'|' -v test="$2" '{ t = $7; gsub(/ /, "", t); if (t == test) { split($8, v, " "); print v[1]; exit } }' "$1"
}

{
    echo "# CPU: Shard vs llama.cpp, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD)"
    echo
    echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs" \
        "($(grep -m1 '^flags' /proc/cpuinfo | grep -ow 'avx2\|fma\|f16c\|avx512f\|avx512_vnni\|avx_vnni\|amx_int8' | sort -u | paste -sd' ')," \
        "$(free -g | awk '/^Mem/ {print $2}') GiB; $threads threads everywhere; model $model."
    echo
    echo "| round | Shard prefill 128 | llama.cpp prefill 128 | Shard decode 128 | llama.cpp decode 128 | Shard k = 8 / k = 1 | llama.cpp k = 8 / k = 1 |"
    echo "|---|---|---|---|---|---|---|"
} >"$report"

for ((r = 1; r <= rounds; r++)); do
    say "round $r of $rounds: oracle bench"
    "$oracle" bench --model "$model" --threads "$threads" --repeat 30 >"$out/oracle-bench-$r.log" 2>&1
    say "round $r of $rounds: llama-bench"
    llama "$llama_bin/llama-bench" -m "$model" -p 128 -n 128 -t "$threads" -r 5 >"$out/llama-bench-$r.log" 2>&1
    say "round $r of $rounds: llama.cpp's k-token passes"
    k_passes >"$out/llama-k-$r.log" 2>&1
    ours_k=$(field "$out/oracle-bench-$r.log" "forward pass, k = 8")
    llama_k1=$(awk '$1 == 1 {print $2}' "$out/llama-k-$r.log")
    llama_k8=$(awk '$1 == 8 {print $2}' "$out/llama-k-$r.log")
    ours_prefill=$(field "$out/oracle-bench-$r.log" "prefill, 128-token prompt")
    ours_decode=$(field "$out/oracle-bench-$r.log" "decode, 128 tokens")
    llama_prefill=$(llama_tps "$out/llama-bench-$r.log" pp128)
    llama_decode=$(llama_tps "$out/llama-bench-$r.log" tg128)
    # Shard ÷ llama.cpp, per round, for the summary line.
    echo "${ours_prefill%% *} $llama_prefill ${ours_decode%% *} $llama_decode" >>"$out/ratios"
    printf '| %d | %s | %s | %s | %s | %s | %s |\n' "$r" \
        "$ours_prefill" "$llama_prefill" "$ours_decode" "$llama_decode" \
        "$ours_k" \
        "$(awk -v a="$llama_k1" -v b="$llama_k8" 'BEGIN {if (a > 0) printf "%.2f× (%s → %s ms)", b / a, a, b}')" \
        >>"$report"
done

awk '$2 > 0 && $4 > 0 {
        p = $1 / $2; d = $3 / $4
        if (NR == 1 || p < pmin) pmin = p; if (NR == 1 || p > pmax) pmax = p
        if (NR == 1 || d < dmin) dmin = d; if (NR == 1 || d > dmax) dmax = d
    }
    END { if (NR) printf "| **Shard ÷ llama.cpp** | **%.2f–%.2f×** | | **%.2f–%.2f×** | | | |\n", pmin, pmax, dmin, dmax }' \
    "$out/ratios" >>"$report"
{
    echo
    echo "## oracle bench, round 1"
    echo
    grep '^|' "$out/oracle-bench-1.log"
    echo
    echo "## llama.cpp's k-token passes, round 1"
    echo
    echo '```'
    cat "$out/llama-k-1.log"
    echo '```'
} >>"$report"

# Decoding after long prompts: the KV cache, not the weights, sets the pace.
# The prompt is one sentence repeated; llama-bench decodes at the same depth.
sentence="The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined movable metal type, oil-based ink and a screw press. "
{
    echo
    echo "## Decoding after a long prompt (ours: oracle generate, 128 greedy tokens; llama.cpp: llama-bench -n 128 -d PROMPT -r 3)"
    echo
    echo "| prompt tokens | Shard prefill tokens/s | Shard decode tokens/s (tokens) | llama.cpp decode tokens/s at that depth |"
    echo "|---|---|---|---|"
} >>"$report"
for copies in 25 50 100; do
    say "decoding after a prompt of $copies sentences"
    prompt=$(python3 -c 'import sys; print(sys.argv[1] * int(sys.argv[2]) + "Printing")' "$sentence" "$copies")
    "$oracle" generate --model "$model" --prompt "$prompt" --max-tokens 128 --threads "$threads" --json \
        >"$out/long-$copies.json" 2>"$out/long-$copies.log"
    read -r prompt_tokens prefill decode generated < <(python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))["stats"]
print(s["prompt_tokens"], round(s["prompt_tokens"] / s["prefill_ms"] * 1000, 1),
      round(s["decode_tokens_per_second"], 1), s["generated_tokens"])' "$out/long-$copies.json")
    llama "$llama_bin/llama-bench" -m "$model" -p 0 -n 128 -d "$prompt_tokens" -t "$threads" -r 3 \
        >"$out/llama-long-$copies.log" 2>&1
    printf '| %s | %s | %s (%s) | %s |\n' "$prompt_tokens" "$prefill" "$decode" "$generated" \
        "$(llama_tps "$out/llama-long-$copies.log" "tg128@d$prompt_tokens")" >>"$report"
done

say "kernels alone"
cargo bench --locked -q -p shared-kernels -- "$threads" 2>/dev/null | grep -v '^test \|^running\|^$' >"$out/kernels.log"
{
    echo
    echo "## Kernels alone (cargo bench -p shared-kernels -- $threads)"
    echo
    grep '^|\|^isa' "$out/kernels.log"
} >>"$report"

# serve ID LABEL PORT COMMAND...: starts a server, waits for it, measures, stops it.
serve() {
    local id=$1 label=$2 port=$3
    shift 3
    "$@" >"$out/$id-server.log" 2>&1 &
    local pid=$!
    local ready=no
    for _ in $(seq 120); do
        if curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null 2>&1; then
            ready=yes
            break
        fi
        sleep 0.5
    done
    if [[ $ready == yes ]]; then
        python3 scripts/bench_serve.py --url "http://127.0.0.1:$port/v1" --label "$label" \
            >"$out/$id-serve.log" 2>&1 || warn "the $id serving benchmark failed: $out/$id-serve.log"
    else
        warn "$id did not answer on port $port: see $out/$id-server.log"
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
say "serving: oracle serve"
serve shard "shard (oracle serve --threads $threads)" 8095 \
    "$oracle" serve --model "$model" --http 127.0.0.1:8095 --no-p2p --threads "$threads"
say "serving: llama-server -np 16"
serve llama-server "llama-server -t $threads -np 16 -c 32768" 8097 \
    env LD_LIBRARY_PATH="$llama_bin" "$llama_bin/llama-server" -m "$model" -t "$threads" -np 16 -c 32768 --port 8097
{
    echo
    echo "## Serving: 1, 4 and 16 clients, 2 streamed greedy requests each (max_tokens 64)"
    echo
    echo "| server | clients | requests | output tokens | wall s | aggregate tokens/s | TTFT p50 ms | TTFT p99 ms |"
    echo "|---|---|---|---|---|---|---|---|"
    cat "$out/shard-serve.log" "$out/llama-server-serve.log" 2>/dev/null | grep '^|' | grep -v '^| server \|^|---' || true
} >>"$report"

say "report: $report"
cat "$report"
