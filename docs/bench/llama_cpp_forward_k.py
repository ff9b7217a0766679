"""Wall time of one llama_decode over k new tokens after a 128-token context.

llama-cpp-python 0.3.36 (llama.cpp 0c1e57098), CPU, f16 KV cache, flash
attention off, use_extra_bufts=False (the AMX repack path segfaulted on an
Intel machine here).

    python3 llama_cpp_forward_k.py [MODEL] [THREADS]    # THREADS default 2
"""
import statistics, sys, time
import llama_cpp
import llama_cpp.llama_cpp as capi
from llama_cpp import Llama

MODEL = sys.argv[1] if len(sys.argv) > 1 else "models/SmolLM2-135M-Instruct.Q4_1.gguf"
THREADS = int(sys.argv[2]) if len(sys.argv) > 2 else 2
CTX = 128
WARMUP, RUNS = 5, 30

orig = capi.llama_model_default_params
def params():
    p = orig(); p.use_extra_bufts = False; return p
capi.llama_model_default_params = params

llm = Llama(MODEL, n_ctx=1024, n_threads=THREADS, n_threads_batch=THREADS, verbose=False)
text = ("The history of the printing press begins in the fifteenth century, when "
        "Johannes Gutenberg combined movable metal type, oil-based ink and a screw press. ") * 20
ids = llm.tokenize(text.encode(), add_bos=True, special=False)[:CTX]
assert len(ids) == CTX
llm.eval(ids)  # 128-token context in the KV cache
new = llm.tokenize(b" Printing spread quickly across Europe and changed how people read.", add_bos=False)[:8]
assert len(new) == 8

print(f"context={CTX} threads={THREADS} warmup={WARMUP} runs={RUNS}")
print(f"{'k':>2} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'tok/s (median)':>15}")
for k in (1, 2, 4, 8):
    times = []
    for r in range(WARMUP + RUNS):
        llm._ctx.kv_cache_seq_rm(0, CTX, -1)          # back to exactly 128 cached tokens
        llm._batch.set_batch(new[:k], n_past=CTX, logits_all=True)  # logits for every new token, as verification needs
        t0 = time.perf_counter()
        llm._ctx.decode(llm._batch)
        capi.llama_synchronize(llm._ctx.ctx)
        t1 = time.perf_counter()
        if r >= WARMUP:
            times.append((t1 - t0) * 1e3)
    med = statistics.median(times)
    print(f"{k:>2} {med:10.3f} {min(times):8.3f} {max(times):8.3f} {k / med * 1e3:15.1f}")
