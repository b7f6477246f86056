#!/usr/bin/env python3
"""gen_7b_shape.py: random bf16 weights of the Qwen2 7B shape (DeepSeek-R1-Distill-Qwen-7B:
hidden 3584, 28 layers, 28 heads / 4 KV heads, intermediate 18944, vocab 152064, qkv
bias, untied lm_head) in HF layout, made on the GPU and written as safetensors shards.

Run on the GPU machine only (15 GB); the output lives in /tmp there and is never carried:
    python3 scripts/gen_7b_shape.py /tmp/dsi-7b
Then: build-gpu/bench_cuda_decode --model /tmp/dsi-7b
Weights are N(0, 0.02) like HF's initializer; norms are 1, biases 0.02*N(0,1).
"""
import json
import os
import sys
import time

import torch
from safetensors.torch import save_file

CFG = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
    "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 151643,
    "eos_token_id": 151643, "use_sliding_window": False,
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/dsi-7b"
    os.makedirs(out, exist_ok=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=dev).manual_seed(1234)
    H, I, V, L = CFG["hidden_size"], CFG["intermediate_size"], CFG["vocab_size"], CFG["num_hidden_layers"]
    hd = H // CFG["num_attention_heads"]
    kv = CFG["num_key_value_heads"] * hd

    def rnd(*shape):
        return (torch.randn(*shape, generator=g, device=dev, dtype=torch.float32) * 0.02).to(torch.bfloat16).cpu()

    t0 = time.time()
    shards, index = [], {}
    shard = {"model.embed_tokens.weight": rnd(V, H)}
    for i in range(L):
        p = f"model.layers.{i}."
        shard[p + "input_layernorm.weight"] = torch.ones(H, dtype=torch.bfloat16)
        shard[p + "post_attention_layernorm.weight"] = torch.ones(H, dtype=torch.bfloat16)
        shard[p + "self_attn.q_proj.weight"] = rnd(H, H)
        shard[p + "self_attn.q_proj.bias"] = rnd(H)
        shard[p + "self_attn.k_proj.weight"] = rnd(kv, H)
        shard[p + "self_attn.k_proj.bias"] = rnd(kv)
        shard[p + "self_attn.v_proj.weight"] = rnd(kv, H)
        shard[p + "self_attn.v_proj.bias"] = rnd(kv)
        shard[p + "self_attn.o_proj.weight"] = rnd(H, H)
        shard[p + "mlp.gate_proj.weight"] = rnd(I, H)
        shard[p + "mlp.up_proj.weight"] = rnd(I, H)
        shard[p + "mlp.down_proj.weight"] = rnd(H, I)
        if i % 7 == 6:
            shards.append(shard)
            shard = {}
    shard["model.norm.weight"] = torch.ones(H, dtype=torch.bfloat16)
    shard["lm_head.weight"] = rnd(V, H)
    shards.append(shard)
    n = len(shards)
    for k, sd in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        save_file(sd, os.path.join(out, name), metadata={"format": "pt"})
        for t in sd:
            index[t] = name
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": index}, f)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(CFG, f, indent=1)
    print(f"wrote {out}: {n} shards in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
