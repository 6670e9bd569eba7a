#!/usr/bin/env python3
"""Random-weight GGUF with gpt-oss-20b's shapes, dtypes and tensor names (a speed and memory
benchmark model: it produces noise, never use it for output checks).

gpt-oss-20b: 24 layers, hidden 2880, 64 query heads and 8 kv heads of 64, 32 experts of width
2880 with top-4 routing, attention sinks, q/k/v/o biases, a sliding window of 128 on even layers,
YaRN RoPE (factor 32 over 4096, base 150000), vocab 201088, context 131072. As in ggml-org's
MXFP4 GGUF release, the expert matrices are MXFP4 (e8m0 scale + 32 fp4 values per 17 bytes)
and the other matrices Q8_0 (`--dense f16` writes them F16, like the F16 conversions); norms,
biases, sinks and the router are F32. The file is about 12 GB with Q8_0 dense matrices.

The real o200k vocabulary cannot be fetched offline, so the tokenizer is a synthetic byte-level
BPE of the same size: the 256 byte tokens, merges of earlier tokens up to id 199997, then the
harmony special tokens at their o200k_harmony ids (<|start|> 200006, <|channel|> 200005,
<|message|> 200008, <|end|> 200007, <|return|> 200002, <|call|> 200012, <|constrain|> 200003,
<|endoftext|> 199999, ...) and reserved tokens up to 201087, with `tokenizer.ggml.pre = gpt-4o`.

  python3 -m pip install gguf numpy
  python3 scripts/gen-gptoss-20b.py --out $MODELS/gpt-oss-20b-shape-mxfp4.gguf [--layers 24] [--seed 0]

`--layers N` writes a shallower model with the same per-layer shapes (quick checks of the
script). Tensors are written one at a time, so memory stays at one tensor (~0.6 GB).
"""

import argparse

import gguf
import numpy as np

HIDDEN, HEADS, KV_HEADS, HEAD_DIM = 2880, 64, 8, 64
EXPERTS, EXPERTS_USED, EXPERT_FF = 32, 4, 2880
VOCAB, NUM_MERGED = 201088, 199998
SPECIALS = {199998: "<|startoftext|>", 199999: "<|endoftext|>", 200002: "<|return|>", 200003: "<|constrain|>",
            200005: "<|channel|>", 200006: "<|start|>", 200007: "<|end|>", 200008: "<|message|>",
            200012: "<|call|>", 200018: "<|endofprompt|>"}
Q = gguf.GGMLQuantizationType


def byte_tokens():
    """GPT-2's byte-to-unicode table: the printable form of each of the 256 byte tokens."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def vocabulary(rng):
    """Tokens, token types and merges of the synthetic BPE vocabulary."""
    base = byte_tokens()
    letters = [base[b] for b in range(ord("a"), ord("z") + 1)] + [base[ord(" ")]]
    tokens, seen, merges = list(base), set(base), []
    while len(tokens) < NUM_MERGED:
        left = tokens[int(rng.integers(256, len(tokens))) if len(tokens) > 256 and rng.random() < 0.7
                      else int(rng.integers(0, 256))]
        right = letters[int(rng.integers(0, len(letters)))]
        if left + right not in seen and len(left) < 16:
            seen.add(left + right)
            tokens.append(left + right)
            merges.append(f"{left} {right}")
    types = [1] * len(tokens)
    for i in range(NUM_MERGED, VOCAB):
        tokens.append(SPECIALS.get(i, f"<|reserved_{i}|>"))
        types.append(3)
    return tokens, types, merges


def q8_0(rng, rows, cols):
    """Q8_0 blocks (f16 scale, 32 int8) of a rows x cols matrix: weights about N(0, 0.02)."""
    blocks = np.empty((rows, cols // 32, 34), dtype=np.uint8)
    blocks[..., :2] = np.full((rows, cols // 32, 1), 0.02 / 40, dtype=np.float16).view(np.uint8)
    blocks[..., 2:] = rng.integers(-100, 101, size=(rows, cols // 32, 32), dtype=np.int8).view(np.uint8)
    return blocks.reshape(rows, cols // 32 * 34)


def mxfp4(rng, experts, rows, cols):
    """MXFP4 blocks (e8m0 scale, 16 bytes of fp4 pairs) of `experts` rows x cols matrices, with
    scales 2^-8..2^-6 so that activations stay finite through 24 layers."""
    blocks = rng.integers(0, 256, size=(experts, rows, cols // 32, 17), dtype=np.uint8)
    blocks[..., 0] = rng.integers(119, 122, size=(experts, rows, cols // 32), dtype=np.uint8)
    return blocks.reshape(experts, rows, cols // 32 * 17)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--dense", choices=["q8_0", "f16"], default="q8_0")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    arch = "gpt-oss"
    w = gguf.GGUFWriter(a.out, arch)
    w.add_name("gpt-oss-20b shape (random weights)")
    w.add_description("random weights with gpt-oss-20b's shapes and dtypes, for speed and memory measurements only")
    w.add_context_length(131072)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(a.layers)
    w.add_feed_forward_length(EXPERT_FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(150000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_expert_count(EXPERTS)
    w.add_expert_used_count(EXPERTS_USED)
    w.add_expert_feed_forward_length(EXPERT_FF)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_sliding_window(128)
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(32.0)
    w.add_rope_scaling_orig_ctx_len(4096)
    w.add_float32(f"{arch}.rope.scaling.yarn_beta_fast", 32.0)
    w.add_float32(f"{arch}.rope.scaling.yarn_beta_slow", 1.0)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_MXFP4_MOE)
    w.add_quantization_version(2)
    tokens, types, merges = vocabulary(rng)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-4o")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(199998)
    w.add_eos_token_id(200002)
    w.add_pad_token_id(199999)
    w.add_add_bos_token(False)

    # Each entry: name, kind, shape as numpy sees it (rows first); built lazily when written.
    plan = [("token_embd.weight", "dense", (VOCAB, HIDDEN))]
    for i in range(a.layers):
        p = f"blk.{i}."
        plan += [
            (p + "attn_norm.weight", "ones", (HIDDEN,)),
            (p + "attn_q.weight", "dense", (HEADS * HEAD_DIM, HIDDEN)),
            (p + "attn_q.bias", "small", (HEADS * HEAD_DIM,)),
            (p + "attn_k.weight", "dense", (KV_HEADS * HEAD_DIM, HIDDEN)),
            (p + "attn_k.bias", "small", (KV_HEADS * HEAD_DIM,)),
            (p + "attn_v.weight", "dense", (KV_HEADS * HEAD_DIM, HIDDEN)),
            (p + "attn_v.bias", "small", (KV_HEADS * HEAD_DIM,)),
            (p + "attn_output.weight", "dense", (HIDDEN, HEADS * HEAD_DIM)),
            (p + "attn_output.bias", "small", (HIDDEN,)),
            (p + "attn_sinks.weight", "small", (HEADS,)),
            (p + "post_attention_norm.weight", "ones", (HIDDEN,)),
            (p + "ffn_gate_inp.weight", "small", (EXPERTS, HIDDEN)),
            (p + "ffn_gate_inp.bias", "small", (EXPERTS,)),
            (p + "ffn_gate_exps.weight", "mxfp4", (EXPERTS, EXPERT_FF, HIDDEN)),
            (p + "ffn_gate_exps.bias", "small", (EXPERTS, EXPERT_FF)),
            (p + "ffn_up_exps.weight", "mxfp4", (EXPERTS, EXPERT_FF, HIDDEN)),
            (p + "ffn_up_exps.bias", "small", (EXPERTS, EXPERT_FF)),
            (p + "ffn_down_exps.weight", "mxfp4", (EXPERTS, HIDDEN, EXPERT_FF)),
            (p + "ffn_down_exps.bias", "small", (EXPERTS, HIDDEN)),
        ]
    plan += [("output_norm.weight", "ones", (HIDDEN,)), ("output.weight", "dense", (VOCAB, HIDDEN))]

    def build(kind, shape):
        if kind == "ones":
            return np.ones(shape, dtype=np.float32), None
        if kind == "small":
            return rng.normal(0, 0.02, size=shape).astype(np.float32), None
        if kind == "mxfp4":
            return mxfp4(rng, *shape), Q.MXFP4
        if a.dense == "f16":
            return rng.normal(0, 0.02, size=shape).astype(np.float16), None
        return q8_0(rng, *shape), Q.Q8_0

    def info(kind, shape):
        """(byte shape, numpy dtype, nbytes, raw dtype) without building the data."""
        if kind in ("ones", "small"):
            return shape, np.dtype(np.float32), 4 * int(np.prod(shape)), None
        if kind == "mxfp4":
            e, r, c = shape
            return (e, r, c // 32 * 17), np.dtype(np.uint8), e * r * c // 32 * 17, Q.MXFP4
        r, c = shape
        if a.dense == "f16":
            return shape, np.dtype(np.float16), 2 * r * c, None
        return (r, c // 32 * 34), np.dtype(np.uint8), r * c // 32 * 34, Q.Q8_0

    for name, kind, shape in plan:
        byte_shape, dtype, nbytes, raw = info(kind, shape)
        w.add_tensor_info(name, byte_shape, dtype, nbytes, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    total = 0
    for k, (name, kind, shape) in enumerate(plan):
        data, _ = build(kind, shape)
        w.write_tensor_data(data)
        total += data.nbytes
        if kind in ("mxfp4", "dense"):
            print(f"[{k + 1}/{len(plan)}] {name} {total / 1e9:.2f} GB", flush=True)
    w.close()
    print(f"wrote {a.out}: {len(plan)} tensors, {total / 1e9:.2f} GB of tensor data")


if __name__ == "__main__":
    main()
