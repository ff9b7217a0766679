"""Oracle capacity with and without scouts, in one run, on loopback.

    python3 scripts/bench_network.py --oracle target/release/oracle --model models/X.gguf

Starts `oracle serve` (p2p on loopback TCP), then for 0, 1 and 4 native scouts
(`oracle scout`, the draft model cut to --draft-layers) sends the same load —
--clients concurrent clients, each --requests completions of --max-tokens —
once greedy and once sampled (temperature 0.8, a seed per request). From the
responses and the oracle's /metrics it prints a Markdown table: oracle tokens/s,
target forward passes per generated token, mean accepted drafts per scout round,
scout round latency p50/p99 (from the histogram's buckets: an upper bound), and
the drafts accepted over proposed. Standard library only.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

PROMPTS = [
    "The history of the printing press begins",
    "def quicksort(items):",
    "Once upon a time, in a village by the sea,",
    "The three laws of thermodynamics are",
    "Dear diary, today I",
    "The best way to learn a language is",
    "In the beginning the universe was",
    "A recipe for bread: first,",
]


def get(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read().decode()


def complete(url, model, prompt, max_tokens, temperature, seed):
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens,
            "temperature": temperature, "seed": seed}
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())["usage"]["completion_tokens"]


def metrics(url):
    """Counters and the round-latency histogram from /metrics."""
    text = get(url + "/metrics")
    values = {}
    buckets = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        m = re.match(r'shard_scout_round_latency_seconds_bucket\{le="([^"]+)"\}', name)
        if m:
            buckets.append((float(m.group(1)), float(value)))
            continue
        base = name.split("{")[0]
        values[base] = values.get(base, 0.0) + float(value)
    return values, buckets


def quantile(before, after, q):
    """Upper bound of the q-quantile from two histogram snapshots."""
    deltas = [(le, a - b) for (le, a), (_, b) in zip(after, before)]
    total = deltas[-1][1] if deltas else 0
    if total <= 0:
        return None
    for le, count in deltas:
        if count >= q * total:
            return le
    return None


def run_load(url, model, clients, requests, max_tokens, temperature):
    tokens = [0]
    lock = threading.Lock()

    def client(c):
        for r in range(requests):
            prompt = PROMPTS[(c * requests + r) % len(PROMPTS)]
            n = complete(url, model, prompt, max_tokens, temperature, seed=c * 100 + r)
            with lock:
                tokens[0] += n

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tokens[0], time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--oracle", default="target/release/oracle")
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--draft-layers", type=int, default=12)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--scouts", default="0,1,4")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="shard-bench-net-")
    oracle = subprocess.Popen(
        [args.oracle, "serve", "--model", args.model, "--http", "127.0.0.1:0",
         "--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--data-dir", os.path.join(work, "oracle"),
         "--draft-deadline-ms", "500", "--golden-interval-s", "3600"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url, p2p = None, None
    while url is None or p2p is None:
        line = oracle.stdout.readline()
        if not line:
            sys.exit("oracle serve exited early")
        if line.startswith("listening on "):
            url = line.split()[-1].strip()
        elif line.startswith("p2p listening on "):
            p2p = line.split()[-1].strip()
    model = json.loads(get(url + "/v1/models"))["data"][0]["id"]
    scouts = []
    rows = []
    try:
        for n in [int(x) for x in args.scouts.split(",")]:
            while len(scouts) < n:
                i = len(scouts)
                scouts.append(subprocess.Popen(
                    [args.oracle, "scout", "--connect", p2p, "--draft-model", args.model,
                     "--draft-layers", str(args.draft_layers),
                     "--data-dir", os.path.join(work, f"scout-{i}")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            deadline = time.time() + 120
            while json.loads(get(url + "/api/status"))["scouts_connected"] < n:
                if time.time() > deadline:
                    sys.exit(f"{n} scouts did not connect")
                time.sleep(0.2)
            for mode, temperature in [("greedy", 0.0), ("sampled", 0.8)]:
                before, hb = metrics(url)
                tokens, seconds = run_load(url, model, args.clients, args.requests,
                                           args.max_tokens, temperature)
                after, ha = metrics(url)
                d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
                rounds = (ha[-1][1] - hb[-1][1]) if ha and hb else 0
                accepted = d.get("shard_scout_draft_tokens_accepted_total", 0)
                proposed = d.get("shard_scout_draft_tokens_proposed_total", 0)
                passes = d.get("shard_target_forward_passes_total", 0)
                generated = d.get("shard_tokens_generated_total", 0)
                p50, p99 = quantile(hb, ha, 0.5), quantile(hb, ha, 0.99)
                fmt = lambda s: "–" if s is None else f"{s * 1000:.1f}"
                rows.append((n, mode, tokens / seconds, passes / max(generated, 1),
                             accepted / rounds if rounds else 0.0, fmt(p50), fmt(p99),
                             f"{int(accepted)}/{int(proposed)}"))
                print(f"scouts={n} {mode}: {tokens} tokens in {seconds:.1f}s", file=sys.stderr)
    finally:
        for s in scouts:
            s.terminate()
        oracle.terminate()
        for p in scouts + [oracle]:
            p.wait()
    print(f"\n{args.clients} clients x {args.requests} requests x {args.max_tokens} tokens; "
          f"scouts draft with {args.draft_layers} layers of the model\n")
    print("| scouts | mode | oracle tok/s | target passes / token | accepted / scout round "
          "| round p50 ms | round p99 ms | scout drafts accepted |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.2f} | {r[4]:.2f} | {r[5]} | {r[6]} | {r[7]} |")


if __name__ == "__main__":
    main()
