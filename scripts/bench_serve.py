"""Measures an OpenAI-compatible completions server under concurrent clients.

    python3 scripts/bench_serve.py --url http://127.0.0.1:8080/v1 --label "shard"

For each concurrency level, that many clients each send the same number of
streamed greedy `/v1/completions` requests (different prompts, fixed
`max_tokens`) one after another. Prints a Markdown table: aggregate output
tokens per second (all clients' tokens ÷ wall time), and time to first token
p50 / p99 over all requests. Works against `oracle serve` and llama.cpp's
servers alike; standard library only.
"""

import argparse
import json
import statistics
import threading
import time
import urllib.request

PROMPTS = [
    "The history of the printing press begins",
    "def quicksort(items):",
    "Once upon a time, in a village by the sea,",
    "The three laws of thermodynamics are",
    "Dear diary, today I",
    "SELECT name, count(*) FROM",
    "The best way to learn a language is",
    "In the beginning the universe was",
    "Rust's ownership model means that",
    "A recipe for bread: first,",
    "The stock market fell today because",
    "import torch\nimport torch.nn as nn\n\nclass",
    "The city of Rome was founded",
    "Photosynthesis is the process",
    "My favourite book is",
    "To install the package, run",
]


def one_request(url, model, prompt, max_tokens):
    """Streams one completion; returns (seconds to first token, tokens)."""
    body = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if model:
        body["model"] = model
    req = urllib.request.Request(
        url + "/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    start = time.perf_counter()
    first = None
    chunks = 0
    usage = None
    with urllib.request.urlopen(req, timeout=600) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                break
            event = json.loads(data)
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices") or []:
                if choice.get("text"):
                    chunks += 1
                    if first is None:
                        first = time.perf_counter() - start
    tokens = usage["completion_tokens"] if usage else chunks
    return (first if first is not None else time.perf_counter() - start), tokens


def run_level(url, model, clients, per_client, max_tokens):
    ttfts, tokens = [], []
    lock = threading.Lock()

    def client(i):
        for r in range(per_client):
            prompt = PROMPTS[(i * per_client + r) % len(PROMPTS)]
            ttft, n = one_request(url, model, prompt, max_tokens)
            with lock:
                ttfts.append(ttft)
                tokens.append(n)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ttfts.sort()
    p99 = ttfts[min(len(ttfts) - 1, int(round(0.99 * (len(ttfts) - 1))))]
    return sum(tokens) / wall, statistics.median(ttfts), p99, sum(tokens), wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8080/v1")
    ap.add_argument("--model", default="", help="model id to send (default: none)")
    ap.add_argument("--label", default="server")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--header", action="store_true", help="print the table header")
    args = ap.parse_args()
    if args.header:
        print("| server | clients | requests | output tokens | wall s | aggregate tokens/s | TTFT p50 ms | TTFT p99 ms |")
        print("|---|---|---|---|---|---|---|---|")
    # One unmeasured request warms caches and thread pools.
    one_request(args.url, args.model, PROMPTS[0], 4)
    for c in [int(x) for x in args.clients.split(",")]:
        rate, p50, p99, total, wall = run_level(
            args.url, args.model, c, args.requests_per_client, args.max_tokens
        )
        print(
            f"| {args.label} | {c} | {c * args.requests_per_client} | {total} | {wall:.1f} "
            f"| {rate:.1f} | {p50 * 1000:.0f} | {p99 * 1000:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
