#!/usr/bin/env python3
"""A BERT sentence-transformers folder (all-MiniLM-L6-v2) as an F32 GGUF for llama.cpp, for the
side-by-side embedding benchmark (llama.cpp's own converter needs PyTorch). It writes what
llama.cpp's conversion/bert.py writes: the `bert` architecture keys, mean pooling, the WordPiece
vocabulary in phantom-space form (`##x` -> `x`, `x` -> `\u2581x`, special tokens as they are)
and the tensors under llama.cpp's BERT names (gguf-py's tensor name map).

    python3 -m pip install gguf numpy safetensors
    scripts/bert-to-gguf.py "$(scripts/fetch-model.sh minilm)" /tmp/all-MiniLM-L6-v2-f32.gguf
"""
import json, sys
from pathlib import Path
import numpy as np
import gguf
from safetensors.numpy import load_file

d = Path(sys.argv[1]); out = sys.argv[2]
cfg = json.loads((d / "config.json").read_text())
w = gguf.GGUFWriter(out, "bert")
w.add_name("all-MiniLM-L6-v2")
w.add_context_length(cfg["max_position_embeddings"])
w.add_embedding_length(cfg["hidden_size"])
w.add_feed_forward_length(cfg["intermediate_size"])
w.add_block_count(cfg["num_hidden_layers"])
w.add_head_count(cfg["num_attention_heads"])
w.add_layer_norm_eps(cfg["layer_norm_eps"])
w.add_file_type(gguf.LlamaFileType.ALL_F32)
w.add_causal_attention(False)
w.add_pooling_type(gguf.PoolingType.MEAN)
# vocab: vocab.txt order, specials CONTROL, phantom space
vocab = (d / "vocab.txt").read_text(encoding="utf-8").split("\n")
if vocab[-1] == "": vocab = vocab[:-1]
tok = json.loads((d / "tokenizer.json").read_text())
special = {t["content"] for t in tok["added_tokens"] if t.get("special")}
toks, types = [], []
for t in vocab:
    if t in special:
        toks.append(t); types.append(gguf.TokenType.CONTROL)
    else:
        toks.append(t[2:] if t.startswith("##") else "\u2581" + t); types.append(gguf.TokenType.NORMAL)
w.add_token_type_count(cfg.get("type_vocab_size", 1))
w.add_tokenizer_model("bert"); w.add_tokenizer_pre("default")
w.add_token_list(toks); w.add_token_types(types)
ids = {t: i for i, t in enumerate(vocab)}
w.add_unk_token_id(ids["[UNK]"]); w.add_sep_token_id(ids["[SEP]"]); w.add_pad_token_id(ids["[PAD]"])
w.add_mask_token_id(ids["[MASK]"])
w.add_bos_token_id(ids["[CLS]"]); w.add_eos_token_id(ids["[SEP]"])
w.add_add_bos_token(True); w.add_add_eos_token(True)
tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, cfg["num_hidden_layers"])
for name, t in load_file(str(d / "model.safetensors")).items():
    n = name[5:] if name.startswith("bert.") else name
    if n in ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"): continue
    new = tmap.get_name(n, try_suffixes=(".weight", ".bias"))
    if new is None: raise SystemExit(f"no mapping for {name}")
    w.add_tensor(new, t.astype(np.float32))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
print("wrote", out)
