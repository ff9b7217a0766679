"""Model download throughput on loopback: 1 and 3 peers against `cp`, and the
cost of hashing.

    python3 scripts/bench_weights.py --oracle target/release/oracle --model models/X.gguf

Starts `oracle serve` processes on loopback TCP (one block of the model loaded:
they serve the whole file either way), the second and third bootstrapping from
the first, and times `oracle fetch` of the model's content id from the first
alone and from all three (the fetcher is given the first; it finds the others in
the DHT). Each case runs --runs times into a fresh file; the median is shown.
For scale: `cp` of the same file on the same machine (page cache warm, as it is
for the oracles), Python's hashlib SHA-256 over the file, and `oracle manifest`
(which hashes every piece and the whole file). Prints a Markdown table.
Standard library only.
"""

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def start_oracle(oracle, model, data_dir, bootstrap=None):
    args = [oracle, "serve", "--model", model, "--layers", "1", "--http", "127.0.0.1:0",
            "--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--data-dir", data_dir,
            "--web-dir", os.path.join(data_dir, "none")]
    if bootstrap:
        args += ["--bootstrap", bootstrap]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    p2p = None
    deadline = time.time() + 120
    while p2p is None and time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("p2p listening on "):
            p2p = line.split(" ", 3)[3].strip()
    if p2p is None:
        proc.kill()
        sys.exit("an oracle did not start")
    return proc, p2p


def timed(f, runs):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--oracle", default="target/release/oracle")
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    size = os.path.getsize(a.model)
    mib = size / 2**20
    work = tempfile.mkdtemp(prefix="shard-bench-weights-")
    rows = []
    try:
        out = os.path.join(work, "copy.gguf")

        def cp():
            if os.path.exists(out):
                os.remove(out)
            shutil.copyfile(a.model, out)
            with open(out, "rb") as f:
                os.fsync(f.fileno())

        rows.append(("`cp` (with fsync)", timed(cp, a.runs)))

        def sha():
            h = hashlib.sha256()
            with open(a.model, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)

        rows.append(("SHA-256 of the file (Python hashlib)", timed(sha, a.runs)))
        manifest = subprocess.run([a.oracle, "manifest", a.model], check=True,
                                  capture_output=True, text=True)
        cid = manifest.stdout.strip().splitlines()[-1]
        rows.append(("`oracle manifest` (every piece + the file)", timed(
            lambda: subprocess.run([a.oracle, "manifest", a.model], check=True,
                                   capture_output=True), a.runs)))

        procs = []
        first, first_addr = start_oracle(a.oracle, a.model, os.path.join(work, "o1"))
        procs.append(first)

        def fetch(label):
            def run():
                dest = os.path.join(work, "fetched.gguf")
                for leftover in (dest, dest + ".part", dest + ".part.have"):
                    if os.path.exists(leftover):
                        os.remove(leftover)
                subprocess.run([a.oracle, "fetch", cid, "--bootstrap", first_addr, "--out", dest,
                                "--data-dir", os.path.join(work, "fetcher")],
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            rows.append((label, timed(run, a.runs)))

        try:
            fetch("`oracle fetch` from 1 peer")
            for i in (2, 3):
                proc, _ = start_oracle(a.oracle, a.model, os.path.join(work, f"o{i}"), first_addr)
                procs.append(proc)
            time.sleep(3)  # provider records reach the first oracle
            fetch("`oracle fetch` from 3 peers")
        finally:
            for p in procs:
                p.kill()
                p.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{mib:.1f} MiB model, median of {a.runs} runs\n")
    print("| what | seconds | MiB/s |")
    print("|---|---|---|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.3f} | {mib / seconds:.0f} |")


if __name__ == "__main__":
    main()
