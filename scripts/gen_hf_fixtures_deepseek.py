#!/usr/bin/env python3
"""gen_hf_fixtures_deepseek.py: tiny random DeepSeek-V2/V3 (MLA + MoE) models and
HF transformers fp32 references, in the format of gen_hf_fixtures.py.

Run on the GPU machine (python3 + torch + transformers 5.x + safetensors); math runs
on the CPU in float32, eager attention.

    python3 scripts/gen_hf_fixtures_deepseek.py --out DIR

Models:
    dsv2-lite   DeepseekV2ForCausalLM like V2-Lite: no q_lora, softmax router,
                greedy top-k, 2 shared experts, first layer dense, default rope
    dsv3-tiny   DeepseekV3ForCausalLM like V3: q_lora, sigmoid router with
                e_score_correction_bias, noaux_tc over 4 groups (top 2 groups),
                norm_topk_prob, routed_scaling_factor 2.5, YaRN with mscale and
                mscale_all_dim, one multi-token-prediction layer past
                num_hidden_layers (tensors present, to be skipped)
    dsv3-fp8    dsv3-tiny's layout at hidden 192 with every linear weight of the
                layers stored as F8_E4M3 + 128x128 f32 `*.weight_scale_inv`
                (quantization_config fp8, weight_block_size [128, 128]); the
                reference runs on the dequantized weights (fp8 value * scale_inv)

The checkpoint is written by this script (not save_pretrained) in the layout the
published DeepSeek checkpoints use: one tensor per expert
(model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight), mlp.gate.weight,
mlp.gate.e_score_correction_bias (f32), and config.json in the original spelling
(rope_scaling with "type", rope_theta at the top, torch_dtype). The same config as
transformers 5 saves it (rope_parameters, dtype) goes to NAME.config-hf5.json so
both spellings are tested. Everything else (NAME.ref.json / NAME.ref.bin) is as in
gen_hf_fixtures.py; ref.json adds "softmax_scale" (HF attention scaling) and
"hf_reload_max_abs_diff": HF from_pretrained of the written directory against the
in-memory reference (proves the checkpoint layout is the one HF loads).
"""
import argparse
import array
import hashlib
import json
import math
import os
import struct
import sys
import tempfile
import traceback

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

PROMPT_LENS = [5, 17, 40]
N_GREEDY = 16
STD = 0.2

COMMON = dict(hidden_act="silu", rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
              attention_bias=False, attention_dropout=0.0, initializer_range=0.02, torch_dtype="bfloat16",
              use_cache=True, moe_layer_freq=1)

MODELS = [
    ("dsv2-lite", "DeepseekV2ForCausalLM", "deepseek_v2", dict(
        vocab_size=320, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, q_lora_rank=None, kv_lora_rank=32, qk_nope_head_dim=16,
        qk_rope_head_dim=16, v_head_dim=24, n_routed_experts=8, n_shared_experts=2, num_experts_per_tok=2,
        first_k_dense_replace=1, topk_method="greedy", scoring_func="softmax", n_group=1, topk_group=1,
        norm_topk_prob=False, routed_scaling_factor=1.0, rope_theta=10000.0, rope_scaling=None,
        max_position_embeddings=2048)),
    ("dsv3-tiny", "DeepseekV3ForCausalLM", "deepseek_v3", dict(
        vocab_size=384, hidden_size=64, intermediate_size=160, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16,
        qk_rope_head_dim=16, v_head_dim=24, n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4,
        first_k_dense_replace=1, topk_method="noaux_tc", scoring_func="sigmoid", n_group=4, topk_group=2,
        norm_topk_prob=True, routed_scaling_factor=2.5, num_nextn_predict_layers=1, rope_theta=10000.0,
        rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512, "beta_fast": 32,
                      "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.8},
        max_position_embeddings=2048)),
    ("dsv3-fp8", "DeepseekV3ForCausalLM", "deepseek_v3", dict(
        vocab_size=256, hidden_size=192, intermediate_size=320, moe_intermediate_size=144, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, q_lora_rank=160, kv_lora_rank=136, qk_nope_head_dim=32,
        qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
        first_k_dense_replace=1, topk_method="noaux_tc", scoring_func="sigmoid", n_group=2, topk_group=1,
        norm_topk_prob=True, routed_scaling_factor=2.5, rope_theta=10000.0,
        rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512, "beta_fast": 32,
                      "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
        max_position_embeddings=2048,
        quantization_config={"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                             "weight_block_size": [128, 128]})),
]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def sha256sums(d):
    lines = []
    for name in sorted(os.listdir(d)):
        p = os.path.join(d, name)
        if name == "SHA256SUMS" or not os.path.isfile(p):
            continue
        with open(p, "rb") as f:
            lines.append("%s  %s\n" % (hashlib.sha256(f.read()).hexdigest(), name))
    with open(os.path.join(d, "SHA256SUMS"), "w") as f:
        f.writelines(lines)


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(STD * torch.randn(p.shape, generator=g) * (64.0 / p.shape[-1]) ** 0.5)
        for name, b in sorted(model.named_buffers()):
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.05 * torch.randn(b.shape, generator=g))


def to_checkpoint(sd, H):
    """HF state dict -> the published per-expert layout (fused 3-D experts split)."""
    out = {}
    for k, v in sd.items():
        if k.endswith("mlp.experts.gate_up_proj") and v.dim() == 3:
            pre = k[: -len("gate_up_proj")]
            if v.shape[2] != H:  # (E, H, 2I) layout
                v = v.transpose(1, 2)
            inter = v.shape[1] // 2
            for e in range(v.shape[0]):
                out["%s%d.gate_proj.weight" % (pre, e)] = v[e, :inter].contiguous()
                out["%s%d.up_proj.weight" % (pre, e)] = v[e, inter:].contiguous()
        elif k.endswith("mlp.experts.down_proj") and v.dim() == 3:
            pre = k[: -len("down_proj")]
            if v.shape[1] != H:  # (E, I, H) layout
                v = v.transpose(1, 2)
            for e in range(v.shape[0]):
                out["%s%d.down_proj.weight" % (pre, e)] = v[e].contiguous()
        else:
            out[k] = v
    return out


def from_checkpoint(model, ck, H):
    """Writes checkpoint-layout tensors back into the model (re-fusing experts)."""
    sd = model.state_dict()
    new = {}
    for k, v in sd.items():
        if k.endswith("mlp.experts.gate_up_proj") and v.dim() == 3:
            pre = k[: -len("gate_up_proj")]
            E = v.shape[0]
            t = torch.stack([torch.cat([ck["%s%d.gate_proj.weight" % (pre, e)], ck["%s%d.up_proj.weight" % (pre, e)]])
                             for e in range(E)])
            if v.shape[2] != H:
                t = t.transpose(1, 2)
            new[k] = t
        elif k.endswith("mlp.experts.down_proj") and v.dim() == 3:
            pre = k[: -len("down_proj")]
            t = torch.stack([ck["%s%d.down_proj.weight" % (pre, e)] for e in range(v.shape[0])])
            if v.shape[1] != H:
                t = t.transpose(1, 2)
            new[k] = t
        else:
            new[k] = ck[k]
    for k in new:
        if tuple(new[k].shape) != tuple(sd[k].shape):
            raise RuntimeError("shape mismatch re-fusing %s: %s vs %s" % (k, new[k].shape, sd[k].shape))
    model.load_state_dict({k: v.to(sd[k].dtype) for k, v in new.items()}, strict=True)


def fp8_eligible(name):
    """Linear weights of the decoder layers, as the published FP8 checkpoints quantize."""
    if not name.startswith("model.layers.") or not name.endswith(".weight"):
        return False
    if "norm" in name or name.endswith("mlp.gate.weight"):
        return False
    return True


def quant_fp8_block(w, bs=128):
    rows, cols = w.shape
    nr, nc = (rows + bs - 1) // bs, (cols + bs - 1) // bs
    scale = torch.zeros(nr, nc, dtype=torch.float32)
    q = torch.zeros(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(nr):
        for j in range(nc):
            blk = w[i * bs:(i + 1) * bs, j * bs:(j + 1) * bs].float()
            amax = float(blk.abs().max())
            s = amax / 448.0 if amax > 0 else 1.0
            scale[i, j] = s
            q[i * bs:(i + 1) * bs, j * bs:(j + 1) * bs] = (blk / s).to(torch.float8_e4m3fn)
    deq = q.float()
    for i in range(nr):
        for j in range(nc):
            deq[i * bs:(i + 1) * bs, j * bs:(j + 1) * bs] *= scale[i, j]
    return q, scale, deq


def greedy(model, prompt):
    ids, out, margins = list(prompt), [], []
    with torch.no_grad():
        for _ in range(N_GREEDY):
            lg = model(torch.tensor([ids])).logits[0, -1].float()
            top = torch.topk(lg, 2)
            out.append(int(top.indices[0]))
            margins.append(float(top.values[0] - top.values[1]))
            ids.append(out[-1])
    return out, margins


def gen_one(out, name, arch, mtype, kw, seed):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    cj = dict(COMMON)
    cj.update(kw)
    cj["architectures"] = [arch]
    cj["model_type"] = mtype
    quant = cj.pop("quantization_config", None)
    n_mtp = cj.get("num_nextn_predict_layers", 0)
    H = cj["hidden_size"]

    # HF reads the original spelling exactly as it would a published checkpoint.
    with tempfile.TemporaryDirectory() as td:
        with open(os.path.join(td, "config.json"), "w") as f:
            json.dump(cj, f, indent=2)
        hfcfg = AutoConfig.from_pretrained(td)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hfcfg, attn_implementation="eager").float()
    model.eval()
    randomize(model, seed)

    ck = to_checkpoint({k: v.detach().float().clone() for k, v in model.state_dict().items()}, H)
    store, ref = {}, {}
    n_fp8 = 0
    for k, v in ck.items():
        if quant and fp8_eligible(k) and v.dim() == 2:
            q, s, deq = quant_fp8_block(v)
            store[k] = q
            store[k + "_scale_inv"] = s
            ref[k] = deq
            n_fp8 += 1
        elif k.endswith("e_score_correction_bias"):
            store[k] = v.float().contiguous()
            ref[k] = v.float()
        else:
            store[k] = v.to(torch.bfloat16).contiguous()
            ref[k] = store[k].float()
    if n_mtp:
        # The multi-token-prediction layer V3 ships past num_hidden_layers (a few of its
        # tensors): dsinfer must skip it.
        g = torch.Generator().manual_seed(seed + 7)
        L = cj["num_hidden_layers"]
        for suffix, shape in [("eh_proj.weight", (H, 2 * H)), ("enorm.weight", (H,)), ("hnorm.weight", (H,)),
                              ("self_attn.kv_a_layernorm.weight", (cj["kv_lora_rank"],)),
                              ("shared_head.norm.weight", (H,))]:
            store["model.layers.%d.%s" % (L, suffix)] = torch.randn(shape, generator=g).to(torch.bfloat16)
    from_checkpoint(model, ref, H)

    save_file(store, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    cfile = dict(cj)
    if quant:
        cfile["quantization_config"] = quant
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfile, f, indent=2)
    with open(os.path.join(d, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2, "do_sample": False}, f, indent=2)
    sha256sums(d)
    # The same config as transformers 5 writes it (rope_parameters, dtype).
    with tempfile.TemporaryDirectory() as td:
        hfcfg.save_pretrained(td)
        with open(os.path.join(td, "config.json")) as f:
            c5 = json.load(f)
    if quant:
        c5["quantization_config"] = quant
    with open(os.path.join(out, name + ".config-hf5.json"), "w") as f:
        json.dump(c5, f, indent=2)

    vocab = cj["vocab_size"]
    g = torch.Generator().manual_seed(seed + 1)
    prompts = [[int(x) for x in torch.randint(3, vocab, (n,), generator=g)] for n in PROMPT_LENS]
    rows_all, greedy_all, margins_all, hf_gen = [], [], [], []
    with torch.no_grad():
        for p in prompts:
            rows_all.append(model(torch.tensor([p])).logits[0].float())
            gi, gm = greedy(model, p)
            greedy_all.append(gi)
            margins_all.append(gm)
            try:
                o = model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=N_GREEDY,
                                   min_new_tokens=N_GREEDY, pad_token_id=0)
                hf_gen.append([int(x) for x in o[0, len(p):]])
            except Exception as e:
                log("%s: generate failed: %s" % (name, e))
                hf_gen.append(None)
    reload_diff = None
    if not quant:
        try:
            m2 = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
            m2.eval()
            with torch.no_grad():
                lg2 = m2(torch.tensor([prompts[2]])).logits[0].float()
            reload_diff = float((lg2 - rows_all[2]).abs().max())
        except Exception as e:
            log("%s: reload failed: %s" % (name, e))
            reload_diff = "failed: %s" % str(e)[:200]
    with open(os.path.join(out, name + ".ref.bin"), "wb") as f:
        f.write(b"DSIHFLG1")
        f.write(struct.pack("<I", len(rows_all)))
        for lg in rows_all:
            f.write(struct.pack("<II", lg.shape[0], lg.shape[1]))
            f.write(array.array("f", lg.contiguous().flatten().tolist()).tobytes())
    re = model.model.rotary_emb
    attn = model.model.layers[0].self_attn
    meta = {
        "name": name, "family": mtype, "prompts": prompts, "greedy": greedy_all, "greedy_margins": margins_all,
        "hf_generate": hf_gen, "hf_generate_matches_greedy": [a == b for a, b in zip(hf_gen, greedy_all)],
        "rope": {"rope_type": getattr(re, "rope_type", None),
                 "inv_freq": [float(x) for x in re.inv_freq.float().tolist()],
                 "attention_scaling": float(getattr(re, "attention_scaling", 1.0))},
        "softmax_scale": float(attn.scaling), "vocab_size": vocab, "fp8_tensors": n_fp8,
        "hf_reload_max_abs_diff": reload_diff,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__}, "seed": seed,
    }
    with open(os.path.join(out, name + ".ref.json"), "w") as f:
        json.dump(meta, f, indent=1)
    size = sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d))
    log("%-10s ok: dir %d bytes, min margin %.4g, generate==greedy %s, reload diff %s, fp8 %d, scale %.6g" %
        (name, size, min(min(m) for m in margins_all), meta["hf_generate_matches_greedy"], reload_diff, n_fp8,
         meta["softmax_scale"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    os.makedirs(a.out, exist_ok=True)
    log("torch %s transformers %s" % (torch.__version__, transformers.__version__))
    failed = 0
    for i, (name, arch, mtype, kw) in enumerate(MODELS):
        if a.only and name not in a.only.split(","):
            continue
        try:
            gen_one(a.out, name, arch, mtype, kw, 3000 + i)
        except Exception:
            failed += 1
            log("%s FAILED:\n%s" % (name, traceback.format_exc()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
