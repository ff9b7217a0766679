#!/usr/bin/env bash
# Builds, on this machine, what a GPU machine with no network needs to run the
# CUDA (and Vulkan) checks and benchmarks, into `.device/` (ignored by git):
#
#   scripts/device-bundle.sh            # then see "Next" at the end of its output
#
# The payload — the three model test suites and `oracle` built with the CUDA
# and wgpu features (stripped, gzipped), the default model, Debian's Vulkan
# loader (libvulkan1: the GPU machine has NVIDIA's Vulkan driver but may lack
# the loader) and the path the suites were built in (their fixtures are found
# through it) — is one tar cut into `.device/part-N` pieces of at most 60 MiB,
# since one call of the device tool carries at most 64 MiB; `.device/manifest`
# lists the pieces and their SHA-256. scripts/device-run.sh puts them together.
#
# The CUDA libraries are loaded at run time (cudarc's dynamic loading), so the
# build needs no CUDA here; it is told the GPU machine's toolkit version
# instead (`CUDARC_CUDA_VERSION`, default 13000 = CUDA 13.0, what the lent
# H100/H200 machines have). That setting makes cudarc's dependents compile
# again, so the build has a target directory of its own
# (`$SHARD_DEVICE_TARGET`, default ~/.cache/shard/target-device) and leaves the
# test and CI builds alone. The first build takes ~25 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
out=.device
target=${SHARD_DEVICE_TARGET:-$HOME/.cache/shard/target-device}
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
export CARGO_TARGET_DIR=$target

if [[ ! -f $model ]]; then
    echo "$model is missing: run scripts/setup.sh model first" >&2
    exit 1
fi

payload=$out/payload
rm -rf "$out"
mkdir -p "$payload/bin"
echo "building the CUDA test suites (target dir $target, CUDA $CUDARC_CUDA_VERSION)" >&2
suites=$(cargo test --release --locked -p shared-model --features cuda,webgpu --no-run \
    --test cube_kernels --test batch_invariance --test model_reference \
    --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
')
if [[ $(wc -l <<<"$suites") -ne 3 ]]; then
    echo "expected three test executables, got: $suites" >&2
    exit 1
fi
echo "building oracle with cuda,wgpu" >&2
cargo build --release --locked -p oracle --features cuda,wgpu

pack() { # NAME PATH
    strip -o "$payload/bin/$1" "$2"
    gzip -f -6 "$payload/bin/$1"
    printf '  %-18s %5d KiB\n' "$1.gz" "$(($(stat -c %s "$payload/bin/$1.gz") / 1024))" >&2
}
while read -r name path; do
    pack "$name" "$path"
done <<<"$suites"
pack oracle "$target/release/oracle"

mkdir -p "$payload/gl" /tmp/shard-apt/partial
apt_opts=(-o APT::Architecture=amd64 -o APT::Architectures=amd64 -o Dir::State::Lists=/tmp/shard-apt)
if ! { apt-get "${apt_opts[@]}" update -qq >/dev/null 2>&1 &&
    (cd "$payload/gl" && apt-get "${apt_opts[@]}" download -qq libvulkan1 >/dev/null 2>&1); }; then
    echo "could not download libvulkan1: the wgpu steps will be skipped there" >&2
fi
cp "$model" "$payload/"
echo "$root" >"$payload/root"

tar -cf - -C "$payload" . | split -b 60M -d -a 1 - "$out/part-"
rm -rf "$payload"
(cd "$out" && sha256sum part-*) >"$out/manifest"
parts=$(wc -l <"$out/manifest")

{
    echo
    echo "Next, with the device tool, from the repository root, one call right after"
    echo "the other (a machine is kept only ~30 s between calls):"
    for ((i = 0; i < parts; i++)); do
        verb=stage
        ((i == parts - 1)) && verb=all
        echo "  run  command: bash scripts/device-run.sh $verb   carry: [\".device/part-$i\", \".device/manifest\"]"
    done
    echo "The last call puts the pieces together, checks the model against"
    echo "models/SHA256SUMS, runs the CUDA suites and the benchmarks, and leaves"
    echo "report.md and a log per step under \$OUT."
} >&2
