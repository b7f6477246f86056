#!/usr/bin/env python3
"""Trains dsinfer's DeepSeek-V3-layout demo model (models/demo-v3): MLA attention with
q/kv compression, a dense first layer, then MoE layers (sigmoid router, noaux_tc over
expert groups, shared expert), on the same King James Bible text and with the same
byte-level BPE tokenizer as models/demo (scripts/demo/train_demo.py, whose helpers
this reuses: text stream with ChatML exchanges, perplexity protocol, SHA256SUMS).

Runs on the GPU machine (python3 + torch + transformers 5 + tokenizers + safetensors).
The checkpoint is written in the published DeepSeek layout (one tensor per expert),
as scripts/gen_hf_fixtures_deepseek.py does, and HF transformers' perplexity of the
written directory is recorded in OUT/../hf_perplexity_v3.json.

usage: train_demo_v3.py TEXT_DIR TOKENIZER_DIR OUT_DIR [--steps N] [--seed S]
"""
import argparse
import json
import math
import os
import random
import shutil
import sys
import time

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, DeepseekV3Config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from train_demo import CTX, build_stream, chapters, perplexity, sha256sums  # noqa: E402
from gen_hf_fixtures_deepseek import to_checkpoint  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("text_dir")
    ap.add_argument("tokenizer_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()
    random.seed(a.seed)
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    dev = "cuda"
    t0 = time.time()

    tok = Tokenizer.from_file(os.path.join(a.tokenizer_dir, "tokenizer.json"))
    vocab = tok.get_vocab_size()
    train_ch = chapters(os.path.join(a.text_dir, "train.txt"))
    with open(os.path.join(a.text_dir, "heldout.txt"), encoding="utf-8") as f:
        held_ids = tok.encode(f.read()).ids
    data = build_stream(tok, train_ch, rng).to(dev)
    eos = tok.token_to_id("<|endoftext|>")
    print(f"train stream {len(data)} tokens; held-out {len(held_ids)} tokens", flush=True)

    cfg = DeepseekV3Config(
        vocab_size=vocab, hidden_size=256, intermediate_size=768, moe_intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=8, num_key_value_heads=8, q_lora_rank=128, kv_lora_rank=64, qk_nope_head_dim=32,
        qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4,
        n_group=4, topk_group=2, first_k_dense_replace=1, norm_topk_prob=True, routed_scaling_factor=2.5,
        max_position_embeddings=1024, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=eos,
        eos_token_id=[eos, tok.token_to_id("<|im_end|>")], num_nextn_predict_layers=0)
    cfg.topk_method = "noaux_tc"
    cfg.scoring_func = "sigmoid"
    model = AutoModelForCausalLM.from_config(cfg).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters", flush=True)

    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1)
    batch, warm = 64, 150
    best, best_state, best_step = float("inf"), None, 0
    for step in range(1, a.steps + 1):
        lr = 2e-3 * min(step / warm, 0.5 * (1 + math.cos(math.pi * step / a.steps)) * 0.95 + 0.05)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(data) - CTX - 1, (batch,), device=dev)
        seq = data[starts[:, None] + torch.arange(CTX + 1, device=dev)[None]]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(seq[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab), seq[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 300 == 0 or step == a.steps:
            model.eval()
            ppl, _ = perplexity(model, held_ids)
            model.train()
            print(f"step {step} loss {loss.item():.3f} held-out ppl {ppl:.2f} ({time.time() - t0:.0f}s)", flush=True)
            if ppl < best:
                best, best_step = ppl, step
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)

    out = a.out_dir
    os.makedirs(out, exist_ok=True)
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    ck = to_checkpoint(sd, cfg.hidden_size)
    ck.pop("lm_head.weight", None)  # tied to model.embed_tokens.weight
    store = {k: (v.float() if k.endswith("e_score_correction_bias") else v.to(torch.bfloat16)).contiguous()
             for k, v in ck.items()}
    save_file(store, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    model.config.dtype = torch.bfloat16
    model.config.architectures = ["DeepseekV3ForCausalLM"]
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(a.tokenizer_dir, name), os.path.join(out, name))

    res = {"protocol": f"non-overlapping {CTX}-token windows, no BOS", "tokens_predicted": 0}
    for name, dt in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        m = AutoModelForCausalLM.from_pretrained(out, dtype=dt).to(dev).eval()
        ppl, cnt = perplexity(m, held_ids)
        res[f"hf_{name}"] = ppl
        res["tokens_predicted"] = cnt
        del m
    g = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).to(dev).eval()
    prompt = tok.encode("And God said unto Moses,").ids
    gen = g.generate(torch.tensor([prompt], device=dev), max_new_tokens=24, do_sample=False)[0].tolist()
    res.update(greedy_prompt_ids=prompt, greedy_ids=gen[len(prompt):], greedy_text=tok.decode(gen[len(prompt):]),
               params=n_params, best_step=best_step, train_seconds=round(time.time() - t0, 1))
    print(json.dumps(res, indent=1), flush=True)
    with open(os.path.join(out, "..", "hf_perplexity_v3.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(out, "PROVENANCE.md"), "w") as f:
        f.write(f"""# dsinfer DeepSeek-V3-layout demo model

A {n_params / 1e6:.1f}M-parameter causal language model in the DeepSeek-V3 layout: MLA
attention (q_lora_rank 128, kv_lora_rank 64, rope dims 16), a dense first layer, then
five MoE layers of 16 routed experts (4 per token, sigmoid router, noaux_tc over 4
groups of which 2 are used, normalised weights x 2.5) and one shared expert. Trained
from scratch by scripts/demo/train_demo_v3.py (seed {a.seed}, up to {a.steps} steps of
{batch}x{CTX} tokens; the checkpoint kept is the one with the best held-out perplexity,
at step {best_step}) on the King James Version of the Bible (1611; public domain), as
shipped by Debian's bible-kjv-text package, with the tokenizer of models/demo. Every
50th chapter is held out (scripts/demo/prepare_text.sh) for perplexity; it was also
used to pick the checkpoint, so its perplexity is slightly optimistic. The router's
e_score_correction_bias stays zero (no load-balancing updates in this training).

It writes biblical English, nothing more: it knows no facts and follows no
instructions. Weights and tokenizer: public domain (CC0), like their training text.
""")
    sha256sums(out)
    print(f"done in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
