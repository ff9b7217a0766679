#!/usr/bin/env python3
"""Independent float32 reference forward pass for llama-architecture GGUF models.

This is a deliberately plain numpy implementation used as a numerical oracle
for Shard's Rust inference code. It shares no code with the Rust crates: the
GGUF file is parsed by PyPI's `gguf` package (the reader maintained alongside
llama.cpp) and every quantized tensor is dequantized once, at load time, with
`gguf.quants.dequantize`. All arithmetic afterwards is float32.

Written against gguf 0.19.0 and numpy 2.x (`pip install gguf numpy`).

Usage:
    python3 llama_f32.py --model M.gguf --prompt-ids 1,2,3 --max-tokens 16 \
        [--dump-logits prompt_logits.npy] [--stop-at-eos]

    # Regenerate the comparison fixtures from llama.cpp's greedy fixture:
    python3 llama_f32.py --model M.gguf --llama-cpp-fixture llama_cpp_greedy.json \
        --out-greedy f32_reference_greedy.json --out-logits f32_reference_logits.json

Prints one JSON object:
    {"prompt_ids": [...], "tokens": [greedy ids], "top2_gaps": [...]}
where top2_gaps[i] is logit(top1) - logit(top2) at the step that chose
tokens[i]. --dump-logits saves a float32 array [n_prompt, n_vocab] holding the
logits of every prompt position.

Model recap (llama):
    x = token_embd[tok]
    for each layer:
        h  = rmsnorm(x) * attn_norm
        q, k, v = Wq h, Wk h, Wv h           (q: n_head heads, k/v: n_head_kv heads)
        q, k = rope(q), rope(k)
        x += Wo · attention(q, k_cache, v_cache)   (causal, GQA)
        h  = rmsnorm(x) * ffn_norm
        x += Wdown (silu(Wgate h) * Wup h)
    logits = output · (rmsnorm(x) * output_norm)   (output = token_embd if tied)

RoPE layout: HF llama checkpoints use the "rotate half" (NeoX) pairing
(x[i], x[i + d/2]). llama.cpp's converter permutes the rows of attn_q / attn_k
when writing GGUF so that the pairs become adjacent, (x[2i], x[2i+1]), and
llama.cpp then applies LLAMA_ROPE_TYPE_NORM. Since we read the GGUF weights
as stored, we rotate adjacent pairs here.
"""

import argparse
import json
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

F32 = np.float32


def _field(reader, key, default=None):
    """Return the scalar/string value of a GGUF metadata key (or default)."""
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


class LlamaF32:
    def __init__(self, path):
        r = GGUFReader(path)
        arch = _field(r, "general.architecture")
        if arch != "llama":
            raise ValueError(f"expected llama architecture, got {arch!r}")
        p = "llama."
        self.n_layer = int(_field(r, p + "block_count"))
        self.n_embd = int(_field(r, p + "embedding_length"))
        self.n_ff = int(_field(r, p + "feed_forward_length"))
        self.n_head = int(_field(r, p + "attention.head_count"))
        self.n_head_kv = int(_field(r, p + "attention.head_count_kv", self.n_head))
        self.eps = F32(_field(r, p + "attention.layer_norm_rms_epsilon"))
        self.rope_base = float(_field(r, p + "rope.freq_base", 10000.0))
        self.head_dim = self.n_embd // self.n_head
        self.n_rot = int(_field(r, p + "rope.dimension_count", self.head_dim))
        self.n_ctx_train = int(_field(r, p + "context_length", 2048))
        self.eos_id = _field(r, "tokenizer.ggml.eos_token_id")
        if _field(r, p + "rope.scaling.type") not in (None, "none"):
            raise NotImplementedError("rope scaling is not implemented")
        if self.n_head % self.n_head_kv:
            raise ValueError("n_head must be a multiple of n_head_kv")
        if self.n_rot % 2 or self.n_rot > self.head_dim:
            raise ValueError("bad rope.dimension_count")

        # Dequantize every tensor exactly once. GGUF stores a 2-D weight with
        # ne = [n_in, n_out]; the reader gives rows of n_in values, so after
        # dequantization W has shape (n_out, n_in) and y = W @ x.
        self.tensors = {}
        self.types = {}
        for t in r.tensors:
            qt = GGMLQuantizationType(t.tensor_type)
            if qt == GGMLQuantizationType.F32:
                w = np.array(t.data, dtype=F32)
            else:
                w = dequantize(t.data, qt).astype(F32, copy=False)
            shape = tuple(int(d) for d in reversed(t.shape))  # (n_out, n_in)
            self.tensors[t.name] = np.ascontiguousarray(w.reshape(shape))
            self.types[t.name] = qt.name

        T = self.tensors
        self.tok_embd = T["token_embd.weight"]  # (n_vocab, n_embd)
        self.n_vocab = self.tok_embd.shape[0]
        # Tied embeddings: when there is no output.weight the output head is
        # the token embedding matrix itself.
        self.output = T.get("output.weight", self.tok_embd)
        self.tied = "output.weight" not in T
        self.output_norm = T["output_norm.weight"]
        # Optional per-dimension rope frequency factors (llama 3.1 style).
        self.rope_factors = T.get("rope_freqs.weight")

        self.layers = []
        for i in range(self.n_layer):
            b = f"blk.{i}."
            self.layers.append({k: T[b + k + ".weight"] for k in (
                "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")})

        # Inverse frequencies theta_i = base^(-2i/n_rot), i = 0 .. n_rot/2-1.
        # Computed in float64 once and stored as float32 (like a constant table).
        inv = self.rope_base ** (-np.arange(0, self.n_rot, 2, dtype=np.float64) / self.n_rot)
        if self.rope_factors is not None:
            inv = inv / self.rope_factors.astype(np.float64)
        self.inv_freq = inv.astype(F32)
        self.reset()

    def reset(self):
        """Empty the KV cache."""
        self.k_cache = [np.zeros((0, self.n_head_kv, self.head_dim), F32) for _ in range(self.n_layer)]
        self.v_cache = [np.zeros((0, self.n_head_kv, self.head_dim), F32) for _ in range(self.n_layer)]
        self.n_past = 0

    # -- building blocks ---------------------------------------------------

    def rmsnorm(self, x, w):
        # x: (n, n_embd). mean of squares in float32.
        ms = np.mean(x * x, axis=-1, keepdims=True, dtype=F32)
        return (x / np.sqrt(ms + self.eps)) * w

    def rope(self, x, pos):
        """Rotate adjacent pairs (x[2i], x[2i+1]) of each head by pos*theta_i.

        x: (n_tokens, n_heads, head_dim); pos: (n_tokens,) int positions.
        Only the first n_rot dimensions of a head are rotated.
        """
        ang = pos.astype(F32)[:, None] * self.inv_freq[None, :]  # (n, n_rot/2)
        cos = np.cos(ang)[:, None, :]
        sin = np.sin(ang)[:, None, :]
        out = x.copy()
        x0 = x[..., 0:self.n_rot:2]
        x1 = x[..., 1:self.n_rot:2]
        out[..., 0:self.n_rot:2] = x0 * cos - x1 * sin
        out[..., 1:self.n_rot:2] = x0 * sin + x1 * cos
        return out

    # -- forward -----------------------------------------------------------

    def forward(self, tokens):
        """Run `tokens` (appended after the cached ones); return logits (n, n_vocab)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        n = len(tokens)
        hd, nh, nkv = self.head_dim, self.n_head, self.n_head_kv
        group = nh // nkv  # query heads per kv head
        pos = np.arange(self.n_past, self.n_past + n)
        scale = F32(1.0 / np.sqrt(hd))
        # Causal mask over [cached + new] keys for the n new queries.
        n_kv_total = self.n_past + n
        key_pos = np.arange(n_kv_total)
        mask = np.where(key_pos[None, :] <= pos[:, None], F32(0), F32(-np.inf)).astype(F32)

        x = self.tok_embd[tokens]  # (n, n_embd)
        for il, L in enumerate(self.layers):
            h = self.rmsnorm(x, L["attn_norm"])
            q = (h @ L["attn_q"].T).reshape(n, nh, hd)
            k = (h @ L["attn_k"].T).reshape(n, nkv, hd)
            v = (h @ L["attn_v"].T).reshape(n, nkv, hd)
            q = self.rope(q, pos)
            k = self.rope(k, pos)
            K = self.k_cache[il] = np.concatenate([self.k_cache[il], k], axis=0)
            V = self.v_cache[il] = np.concatenate([self.v_cache[il], v], axis=0)

            # GQA: query head j attends with kv head j // group (llama.cpp's
            # broadcast convention: consecutive query heads share a kv head).
            attn = np.empty((n, nh, hd), F32)
            for j in range(nh):
                kj = K[:, j // group, :]  # (n_kv_total, hd)
                vj = V[:, j // group, :]
                s = (q[:, j, :] @ kj.T) * scale + mask  # (n, n_kv_total)
                s = s - s.max(axis=-1, keepdims=True)
                p = np.exp(s)
                p /= p.sum(axis=-1, keepdims=True)
                attn[:, j, :] = p @ vj
            x = x + attn.reshape(n, nh * hd) @ L["attn_output"].T

            h = self.rmsnorm(x, L["ffn_norm"])
            g = h @ L["ffn_gate"].T
            u = h @ L["ffn_up"].T
            a = (g / (F32(1) + np.exp(-g))) * u  # silu(g) * u
            x = x + a @ L["ffn_down"].T

        self.n_past += n
        x = self.rmsnorm(x, self.output_norm)
        logits = x @ self.output.T
        assert logits.dtype == F32
        return logits

    def generate(self, prompt_ids, max_tokens, stop_at_eos=False):
        """Greedy decode. Returns (tokens, top2_gaps, prompt_logits)."""
        self.reset()
        prompt_logits = self.forward(prompt_ids)
        last = prompt_logits[-1]
        tokens, gaps = [], []
        for step in range(max_tokens):
            top2 = np.argpartition(-last, 1)[:2]
            top2 = top2[np.argsort(-last[top2], kind="stable")]
            # Ties resolve to the lowest id (argmax convention).
            tok = int(np.argmax(last))
            tokens.append(tok)
            gaps.append(float(last[top2[0]] - last[top2[1]]))
            if stop_at_eos and tok == self.eos_id:
                break
            if step + 1 < max_tokens:
                last = self.forward([tok])[-1]
        return tokens, gaps, prompt_logits


def _versions():
    from importlib.metadata import version
    return {"gguf": version("gguf"), "numpy": np.__version__}


def compare_with_llama_cpp(m, fixture_path, out_greedy, out_logits, n_tokens=48):
    """Run every prompt of llama.cpp's greedy fixture through this reference.

    Writes (1) per prompt our n_tokens greedy ids, top-2 gaps and the first
    position where we differ from llama.cpp, and (2) for the first prompt the
    top-10 logits at every prompt position plus the full last-position logits.
    """
    with open(fixture_path) as f:
        fx = json.load(f)
    header = {
        "generator": "shared-model/tests/reference/llama_f32.py",
        "versions": _versions(),
        "model": fx.get("model"),
        "numerics": "float32 throughout; weights dequantized once with gguf.quants.dequantize; "
                    "f32 KV cache; adjacent-pair (NORM) RoPE; no activation quantization",
    }
    prompts, first = [], None
    for e in fx["prompts"]:
        ids = [int(i) for i in e["prompt_ids"]]
        toks, gaps, plog = m.generate(ids, n_tokens)
        if first is None:
            first = (e, ids, plog)
        ref, rgap = e["generated_ids"], e["top1_top2_gap"]
        div = next((i for i in range(min(len(ref), n_tokens)) if ref[i] != toks[i]), None)
        prompts.append({
            "name": e.get("name"),
            "prompt": e.get("prompt"),
            "prompt_ids": ids,
            "tokens": toks,
            "top2_gaps": gaps,
            "llama_cpp_n_generated": len(ref),
            "llama_cpp_stopped_at_eos": e.get("stopped_at_eos"),
            # Index into the generated tokens (compared over llama.cpp's length).
            "first_divergence": div,
            "llama_cpp_gap_at_divergence": None if div is None else rgap[div],
            "f32_gap_at_divergence": None if div is None else gaps[div],
            "llama_cpp_token_at_divergence": None if div is None else ref[div],
            "f32_token_at_divergence": None if div is None else toks[div],
        })
    doc = dict(header, method=f"greedy argmax for {n_tokens} tokens (not stopping at EOS) "
               "on each prompt of llama_cpp_greedy.json; divergence compared over "
               "llama.cpp's generated length", n_tokens=n_tokens, prompts=prompts)
    with open(out_greedy, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")

    e, ids, plog = first
    positions = []
    for pos in range(len(ids)):
        row = plog[pos]
        top = np.argsort(-row, kind="stable")[:10]
        positions.append({"position": pos, "token_id": ids[pos],
                          "top10": [[int(t), float(row[t])] for t in top]})
    doc = dict(header, name=e.get("name"), prompt=e.get("prompt"), prompt_ids=ids,
               n_vocab=int(plog.shape[1]), positions=positions,
               last_logits=[round(float(v), 4) for v in plog[-1]])
    with open(out_logits, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    return prompts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-ids", help="comma-separated token ids")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--dump-logits", metavar="OUT.npy", help="save prompt logits [n_prompt, n_vocab]")
    ap.add_argument("--stop-at-eos", action="store_true")
    ap.add_argument("--llama-cpp-fixture", metavar="IN.json",
                    help="compare against llama.cpp's greedy fixture (needs --out-greedy, --out-logits)")
    ap.add_argument("--out-greedy", metavar="OUT.json")
    ap.add_argument("--out-logits", metavar="OUT.json")
    args = ap.parse_args(argv)

    if args.llama_cpp_fixture:
        if not (args.out_greedy and args.out_logits):
            ap.error("--llama-cpp-fixture needs --out-greedy and --out-logits")
        m = LlamaF32(args.model)
        for p in compare_with_llama_cpp(m, args.llama_cpp_fixture, args.out_greedy,
                                        args.out_logits, args.max_tokens):
            print(p["name"], "first_divergence", p["first_divergence"],
                  "gaps (llama.cpp, f32)", p["llama_cpp_gap_at_divergence"], p["f32_gap_at_divergence"])
        return
    if not args.prompt_ids:
        ap.error("--prompt-ids is required")

    ids = [int(s) for s in args.prompt_ids.split(",") if s.strip()]
    if not ids:
        ap.error("empty --prompt-ids")
    m = LlamaF32(args.model)
    if any(i < 0 or i >= m.n_vocab for i in ids):
        ap.error("prompt id out of range")
    tokens, gaps, prompt_logits = m.generate(ids, args.max_tokens, args.stop_at_eos)
    if args.dump_logits:
        np.save(args.dump_logits, prompt_logits.astype(F32))
    json.dump({"prompt_ids": ids, "tokens": tokens, "top2_gaps": gaps}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
