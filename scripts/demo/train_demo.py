#!/usr/bin/env python3
"""Trains dsinfer's bundled demo model: a small Qwen2-layout (DeepSeek-R1-Distill-Qwen
family) causal LM with its own byte-level BPE tokenizer, on the King James Bible
(public domain, from Debian's bible-kjv-text via scripts/demo/prepare_text.sh).

Runs on the GPU machine (python3 + torch + transformers + tokenizers), in about a
minute. Writes an HF-layout model directory:
  config.json, generation_config.json, model.safetensors (bf16), tokenizer.json,
  tokenizer_config.json (ChatML chat template), SHA256SUMS, PROVENANCE.md
and hf_perplexity.json: HF transformers' perplexity of the saved directory on the
held-out text, by the protocol `dsinfer perplexity` uses (see perplexity()).

usage: train_demo.py TEXT_DIR OUT_DIR [--steps N] [--seed S]
"""
import argparse
import hashlib
import json
import math
import os
import random
import time

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

# The Qwen2 / DeepSeek-R1-Distill-Qwen pre-tokenizer split, then byte-level.
SPLIT_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# ChatML without a default system prompt; dsinfer renders it natively.
CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                 "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
CTX = 256          # training context and perplexity window
VOCAB = 4096


def train_tokenizer(lines):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer)
    return tok


def chapters(path):
    """Chapters of the prepared text: verses one per line, chapters split by blank lines."""
    with open(path, encoding="utf-8") as f:
        return [c.strip("\n") for c in f.read().split("\n\n") if c.strip()]


def build_stream(tok, chaps, rng):
    """Token stream: chapters separated by <|endoftext|>, plus ChatML exchanges in which
    the user gives a verse and the assistant continues with the next two, so that chat
    requests get the same kind of English back."""
    eos = tok.token_to_id("<|endoftext|>")
    ids = []
    for c in chaps:
        ids += tok.encode(c + "\n").ids + [eos]
        verses = c.split("\n")
        for _ in range(max(1, len(verses) // 8)):
            if len(verses) < 3:
                break
            k = rng.randrange(len(verses) - 2)
            chat = (f"<|im_start|>user\n{verses[k]}<|im_end|>\n<|im_start|>assistant\n"
                    f"{verses[k + 1]}\n{verses[k + 2]}<|im_end|>\n")
            ids += tok.encode(chat).ids + [eos]
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def perplexity(model, ids, ctx=CTX):
    """dsinfer's protocol: non-overlapping windows of ctx tokens over the encoded text
    (no BOS); each window predicts its tokens 1..n-1 from the window's own prefix; a
    last window shorter than 2 tokens is dropped. ppl = exp(total NLL / predicted)."""
    nll, count = 0.0, 0
    dev = next(model.parameters()).device
    for s in range(0, len(ids), ctx):
        w = ids[s:s + ctx]
        if len(w) < 2:
            break
        x = torch.tensor(w, device=dev)[None]
        logits = model(x).logits.float()[0, :-1]
        nll += torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
        count += len(w) - 1
    return math.exp(nll / count), count


def sha256sums(d):
    lines = []
    for name in sorted(os.listdir(d)):
        p = os.path.join(d, name)
        if name == "SHA256SUMS" or name.startswith(".") or not os.path.isfile(p):
            continue
        with open(p, "rb") as f:
            lines.append(f"{hashlib.sha256(f.read()).hexdigest()}  {name}\n")
    with open(os.path.join(d, "SHA256SUMS"), "w") as f:
        f.writelines(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("text_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()
    random.seed(a.seed)
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    dev = "cuda"
    t0 = time.time()

    train_ch = chapters(os.path.join(a.text_dir, "train.txt"))
    with open(os.path.join(a.text_dir, "heldout.txt"), encoding="utf-8") as f:
        heldout = f.read()
    tok = train_tokenizer(train_ch)
    data = build_stream(tok, train_ch, rng).to(dev)
    held_ids = tok.encode(heldout).ids
    print(f"tokenizer: {tok.get_vocab_size()} tokens; train stream {len(data)} tokens; "
          f"held-out {len(held_ids)} tokens ({time.time() - t0:.1f}s)", flush=True)

    eos = tok.token_to_id("<|endoftext|>")
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=256, intermediate_size=768, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                      rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                      bos_token_id=eos, eos_token_id=[eos, tok.token_to_id("<|im_end|>")],
                      use_sliding_window=False)
    model = Qwen2ForCausalLM(cfg).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters", flush=True)

    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1)
    batch, warm = 64, 150
    best, best_state = float("inf"), None
    for step in range(1, a.steps + 1):
        lr = 2e-3 * min(step / warm, 0.5 * (1 + math.cos(math.pi * step / a.steps)) * 0.95 + 0.05)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(data) - CTX - 1, (batch,), device=dev)
        idx = starts[:, None] + torch.arange(CTX + 1, device=dev)[None]
        seq = data[idx]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(seq[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, VOCAB), seq[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 300 == 0 or step == a.steps:
            model.eval()
            ppl, _ = perplexity(model, held_ids)
            model.train()
            print(f"step {step} loss {loss.item():.3f} held-out ppl {ppl:.2f} ({time.time() - t0:.0f}s)",
                  flush=True)
            if ppl < best:
                best = ppl
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)

    out = a.out_dir
    os.makedirs(out, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = cfg.max_position_embeddings
    fast.save_pretrained(out)
    for extra in ("special_tokens_map.json", "chat_template.jinja"):
        p = os.path.join(out, extra)
        if extra == "chat_template.jinja" and os.path.exists(p):
            # keep the template inside tokenizer_config.json, where dsinfer reads it
            with open(os.path.join(out, "tokenizer_config.json")) as f:
                tc = json.load(f)
            if "chat_template" not in tc:
                tc["chat_template"] = CHAT_TEMPLATE
                with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
                    json.dump(tc, f, indent=2, ensure_ascii=False)
            os.remove(p)

    # HF's view of the saved directory, as a user would load it.
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
    res["greedy_prompt_ids"] = prompt
    res["greedy_ids"] = gen[len(prompt):]
    res["greedy_text"] = tok.decode(gen[len(prompt):])
    res["params"] = n_params
    res["train_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(res, indent=1), flush=True)
    with open(os.path.join(a.out_dir, "..", "hf_perplexity.json"), "w") as f:
        json.dump(res, f, indent=1)

    with open(os.path.join(out, "PROVENANCE.md"), "w") as f:
        f.write(f"""# dsinfer demo model

A {n_params / 1e6:.1f}M-parameter causal language model in the Qwen2 layout (the
DeepSeek-R1-Distill-Qwen family's architecture), trained from scratch by
scripts/demo/train_demo.py (seed {a.seed}, {a.steps} steps of {batch}x{CTX} tokens) on the King James
Version of the Bible (1611; public domain), as shipped by Debian's bible-kjv-text package.
Every 50th chapter is held out (scripts/demo/prepare_text.sh) for perplexity.

The byte-level BPE tokenizer ({VOCAB} tokens, Qwen2 pre-tokenizer split) was trained on
the same text. Chat uses ChatML without a default system prompt; training mixed in
exchanges where the user gives a verse and the assistant continues with the next two.

It writes biblical English, nothing more: it knows no facts and follows no
instructions. Weights and tokenizer: public domain (CC0), like their training text.
""")
    sha256sums(out)
    print(f"done in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
