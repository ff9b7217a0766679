#!/usr/bin/env bash
# Runs on a lent GPU machine (no network, no Rust) what scripts/device-bundle.sh
# built, and writes the results under $OUT (report.md and one log per step):
#
#   bash scripts/device-run.sh stage   # keep the carried piece, run nothing
#   bash scripts/device-run.sh all     # keep it, put the pieces together, run
#
# Each call carries one `.device/part-N` and `.device/manifest`; the machine
# keeps /tmp between calls while it stays warm. Steps, most important first,
# each under a time limit so the call ends inside the tool's 10 minutes: the
# CUDA suites (our kernels against the dequantised products, batch invariance,
# the f32 reference), `oracle bench --backend cuda`, the same on wgpu (the
# GPU's Vulkan driver), then the CPU bench and suites on this machine's
# processor.
set -uo pipefail
mode=${1:-all}
work=/tmp/shard-device
out=${OUT:-$work/out}
mkdir -p "$work/parts" "$out"
started=$SECONDS

if [[ ! -f .device/manifest ]]; then
    echo "no .device/manifest: carry it with each piece (scripts/device-bundle.sh prints the calls)" >&2
    exit 1
fi
for f in .device/part-*; do
    [[ -f $f ]] && cp "$f" "$work/parts/" && echo "kept $(basename "$f")"
done
[[ $mode == stage ]] && exit 0

manifest=$PWD/.device/manifest
if ! (cd "$work/parts" && sha256sum --quiet -c "$manifest"); then
    echo "pieces are missing or damaged (above): carry them again, then run 'all'" >&2
    exit 1
fi
rm -rf "$work/payload" && mkdir -p "$work/payload"
# shellcheck disable=SC2046 # the pieces' names have no spaces, in manifest order
cat $(awk '{print "'"$work"'/parts/" $2}' .device/manifest) | tar -xf - -C "$work/payload"
model=$work/payload/SmolLM2-135M-Instruct.Q4_1.gguf
want=$(awk '$2 == "SmolLM2-135M-Instruct.Q4_1.gguf" {print $1}' models/SHA256SUMS)
if [[ $(sha256sum "$model" | cut -d' ' -f1) != "$want" ]]; then
    echo "the model in the pieces is not the one models/SHA256SUMS names" >&2
    exit 1
fi
mkdir -p "$work/bin"
for f in "$work"/payload/bin/*.gz; do
    gunzip -c "$f" >"$work/bin/$(basename "$f" .gz)"
done
chmod +x "$work"/bin/*
export SHARD_MODEL=$model RUST_BACKTRACE=1

# The suites find their fixtures under the path they were built in.
built_in=$(cat "$work/payload/root")
if [[ ! -e $built_in/shared-model/tests/fixtures ]]; then
    if [[ -e $built_in && ! -L $built_in ]]; then
        echo "$built_in exists here and is not this checkout: the suites cannot find their fixtures" >&2
        exit 1
    fi
    mkdir -p "$(dirname "$built_in")"
    ln -sfn "$PWD" "$built_in"
fi

# cudarc loads libcuda and libnvrtc at run time.
libdirs=$(find /usr/local /usr/lib /opt -name 'libnvrtc.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH=${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

vulkan=no
if ! ldconfig -p | grep -q libvulkan; then
    for f in "$work"/payload/gl/*.deb; do [[ -f $f ]] && dpkg -x "$f" /; done
    ldconfig
fi
if ldconfig -p | grep -q libvulkan; then
    vulkan=yes
    icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    [[ -f $icd ]] && export VK_DRIVER_FILES=${VK_DRIVER_FILES:-$icd}
fi

report=$out/report.md
{
    echo "# Shard on $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"
    echo
    echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores;" \
        "flags: $(grep -m1 flags /proc/cpuinfo | grep -o 'avx512f\|avx512_vnni\|avx_vnni\|avx2' | sort -u | paste -sd' ')"
    echo "- libnvrtc from: ${libdirs:-not found}; Vulkan loader: $vulkan"
    echo
    echo "| step | result | seconds |"
    echo "|---|---|---|"
} >"$report"

# step NAME LIMIT COMMAND...: runs COMMAND with its output in $out/NAME.log.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((560 - (SECONDS - started)))
    if ((left < 30)); then
        echo "| $name | skipped: out of time | – |" >>"$report"
        return
    fi
    ((limit > left)) && limit=$left
    local t=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    local result="ok"
    ((rc == 124)) && result="timed out after ${limit} s"
    ((rc != 0 && rc != 124)) && result="FAILED (exit $rc)"
    echo "| $name | $result | $((SECONDS - t)) |" >>"$report"
    echo "== $name: $result"
    tail -n 25 "$out/$name.log"
}

bin=$work/bin
step cuda-kernels 120 "$bin/cube_kernels" cuda --test-threads 1
step cuda-invariance 180 "$bin/batch_invariance" cuda --test-threads 1
step cuda-reference 120 "$bin/model_reference" cuda --test-threads 1
step cuda-bench 180 "$bin/oracle" bench --model "$model" --backend cuda --repeat 20
if [[ $vulkan == yes ]]; then
    step wgpu-kernels 90 "$bin/cube_kernels" wgpu --test-threads 1
    step wgpu-invariance 120 "$bin/batch_invariance" wgpu --test-threads 1
    step wgpu-bench 120 "$bin/oracle" bench --model "$model" --backend wgpu --repeat 10
fi
step cpu-bench 90 "$bin/oracle" bench --model "$model" --backend cpu --repeat 10
step cpu-bench-2-threads 90 "$bin/oracle" bench --model "$model" --backend cpu --threads 2 --repeat 10
step cpu-suites 120 "$bin/batch_invariance" --skip gpu::

# The benchmarks' tables, for docs/BENCHMARKS.md.
for f in "$out"/*bench*.log; do
    [[ -f $f ]] || continue
    {
        echo
        echo "## $(basename "$f" .log)"
        echo
        grep -E '^\||^[a-z].*:' "$f"
    } >>"$report"
done
cat "$report"
