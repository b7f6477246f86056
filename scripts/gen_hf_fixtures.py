#!/usr/bin/env python3
"""gen_hf_fixtures.py: tiny random HF models + HF transformers fp32 references.

Run on the GPU machine (python3 + torch + transformers 5.x + tokenizers); math runs on
the CPU in float32 (no TF32) so the references are exact fp32 HF results.

    python3 scripts/gen_hf_fixtures.py --out DIR

For each model NAME it writes
    DIR/NAME/                 HF layout: config.json, generation_config.json,
                              model.safetensors (bf16, save_pretrained), SHA256SUMS
                              (tiny-chat also tokenizer.json, tokenizer_config.json)
    DIR/NAME.ref.json         prompts (ids), greedy continuations (16 ids each), the
                              top1-top2 logit margin of every greedy step, HF's rope
                              inv_freq + attention scaling, versions
    DIR/NAME.ref.bin          HF fp32 logits of every prompt position:
                              magic "DSIHFLG1", u32 n_prompts, then per prompt
                              u32 n_rows, u32 vocab, n_rows*vocab f32 (little endian)

The weights are drawn with a larger std than HF's default init so that logits are
spread and greedy decoding is not decided by 1e-6 differences.
"""
import argparse
import array
import hashlib
import json
import os
import struct
import sys
import traceback

import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

CHAT_TEXT = """\
The quick brown fox jumps over the lazy dog. A small model can still say hello.
Hello! How can I help you today? I would like to know the weather in Paris.
The weather in Paris is sunny and warm, with a light breeze from the west.
Thank you very much. You are welcome; ask me anything else you want to know.
What is two plus two? Two plus two is four. What is three times three? It is nine.
Servers answer requests, batch them together, and stream tokens back to clients.
The cat sat on the mat, and the dog slept by the door while the rain fell outside.
Numbers like 1, 2, 3, 42 and 2026 appear in text; so do names like Alice and Bob.
Please write a short poem about the sea. The sea is wide, the sea is deep, it sings
the sailors all to sleep. Good night, and see you tomorrow morning at nine o'clock.
"""

QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
          " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
          "{% endif %}")

# name, family, config kwargs, rope (None = default), expected HF rope_type, weight std
MODELS = [
    ("qwen2-gqa-tied", "qwen2", dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                     num_key_value_heads=2, tie_word_embeddings=True), None, 10000.0),
    ("qwen2-untied", "qwen2", dict(vocab_size=384, hidden_size=96, intermediate_size=160, num_attention_heads=6,
                                   num_key_value_heads=1, tie_word_embeddings=False), None, 1000000.0),
    ("llama-mha", "llama", dict(vocab_size=256, hidden_size=64, intermediate_size=160, num_attention_heads=4,
                                num_key_value_heads=4, tie_word_embeddings=False), None, 10000.0),
    ("llama-linear", "llama", dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_attention_heads=2,
                                   num_key_value_heads=2, tie_word_embeddings=False),
     {"rope_type": "linear", "factor": 4.0}, 100000.0),
    ("llama-llama3", "llama", dict(vocab_size=512, hidden_size=128, intermediate_size=192, num_attention_heads=4,
                                   num_key_value_heads=2, tie_word_embeddings=False),
     {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 256}, 10000.0),
    ("llama-headdim", "llama", dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                    num_key_value_heads=2, head_dim=32, tie_word_embeddings=True), None, 10000.0),
]
PROMPT_LENS = [5, 17, 40]
N_GREEDY = 16
STD = 0.2


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def make_config(family, kw, rope, theta, extra=None):
    """Builds the HF config with rope in whichever spelling this transformers uses."""
    cls = Qwen2Config if family == "qwen2" else LlamaConfig
    base = dict(num_hidden_layers=2, max_position_embeddings=2048, rms_norm_eps=1e-6, bos_token_id=1,
                eos_token_id=2, attn_implementation="eager")
    base.update(kw)
    if extra:
        base.update(extra)
    want = (rope or {}).get("rope_type", "default")
    rp = dict(rope or {"rope_type": "default"})
    rp["rope_theta"] = theta
    try:
        cfg = cls(rope_parameters=rp, **base)
        got = (getattr(cfg, "rope_parameters", None) or {}).get("rope_type")
        if got == want and float((cfg.rope_parameters or {}).get("rope_theta", -1)) == theta:
            return cfg
        log("rope_parameters not taken (%r), trying rope_scaling" % (got,))
    except Exception as e:  # older transformers
        log("rope_parameters failed: %s" % e)
    rs = None
    if rope:
        rs = dict(rope)
        rs["type"] = rs["rope_type"]
    return cls(rope_scaling=rs, rope_theta=theta, **base)


def sha256sums(d):
    lines = []
    for name in sorted(os.listdir(d)):
        p = os.path.join(d, name)
        if name == "SHA256SUMS" or not os.path.isfile(p):
            continue
        h = hashlib.sha256()
        with open(p, "rb") as f:
            h.update(f.read())
        lines.append("%s  %s\n" % (h.hexdigest(), name))
    with open(os.path.join(d, "SHA256SUMS"), "w") as f:
        f.writelines(lines)


def train_tokenizer(out_dir):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    try:
        from tokenizers import processors
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    except Exception as e:
        log("no ByteLevel post-processor: %s" % e)
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CHAT_TEXT] * 4, trainer=trainer)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    ids = {s: tok.token_to_id(s) for s in specials}
    added = {str(ids[s]): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                           "single_word": False, "special": True} for s in specials}
    tcfg = {
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "bos_token": None,
        "chat_template": CHATML, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>",
        "errors": "replace", "model_max_length": 2048, "pad_token": "<|endoftext|>",
        "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tcfg, f, indent=2)
    return tok, ids


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


def rope_info(model):
    re = model.model.rotary_emb
    return {"rope_type": getattr(re, "rope_type", None),
            "inv_freq": [float(x) for x in re.inv_freq.float().tolist()],
            "attention_scaling": float(getattr(re, "attention_scaling", 1.0))}


def greedy(model, prompt):
    """Full-recompute greedy loop (no KV cache): argmax of fp32 logits, plus margins."""
    ids = list(prompt)
    out, margins = [], []
    with torch.no_grad():
        for _ in range(N_GREEDY):
            lg = model(torch.tensor([ids])).logits[0, -1].float()
            top = torch.topk(lg, 2)
            t = int(top.indices[0])
            margins.append(float(top.values[0] - top.values[1]))
            out.append(t)
            ids.append(t)
    return out, margins


def gen_one(out, name, family, kw, rope, theta, seed, tok=None, tok_ids=None):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    extra = None
    if tok is not None:
        extra = dict(bos_token_id=tok_ids["<|endoftext|>"], eos_token_id=tok_ids["<|im_end|>"],
                     pad_token_id=tok_ids["<|endoftext|>"])
    cfg = make_config(family, kw, rope, theta, extra)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    randomize(model, seed)
    want = (rope or {}).get("rope_type", "default")
    model = model.to(torch.bfloat16)
    try:
        model.config.dtype = torch.bfloat16
    except Exception:
        pass
    try:
        model.save_pretrained(d, safe_serialization=True)
    except TypeError:  # transformers versions where safetensors is the only format
        model.save_pretrained(d)
    sha256sums(d)

    # Reload from disk in fp32: the reference sees exactly the bf16 weights we ship.
    try:
        ref = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    except TypeError:
        ref = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager")
    ref.eval()
    ri = rope_info(ref)
    if ri["rope_type"] != want:
        raise RuntimeError("%s: HF rope_type %r, wanted %r" % (name, ri["rope_type"], want))
    vocab = ref.config.vocab_size

    g = torch.Generator().manual_seed(seed + 1)
    prompts = [[int(x) for x in torch.randint(3, vocab, (n,), generator=g)] for n in PROMPT_LENS]
    if tok is not None:
        text = "<|im_start|>user\nHello! What is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n"
        prompts[1] = tok.encode(text).ids
    rows_all, greedy_all, margins_all, hf_gen = [], [], [], []
    with torch.no_grad():
        for p in prompts:
            lg = ref(torch.tensor([p])).logits[0].float()
            rows_all.append(lg)
            gi, gm = greedy(ref, p)
            greedy_all.append(gi)
            margins_all.append(gm)
            try:
                o = ref.generate(torch.tensor([p]), do_sample=False, max_new_tokens=N_GREEDY,
                                 min_new_tokens=N_GREEDY, pad_token_id=0)
                hf_gen.append([int(x) for x in o[0, len(p):]])
            except Exception as e:
                log("%s: generate failed: %s" % (name, e))
                hf_gen.append(None)
    with open(os.path.join(out, name + ".ref.bin"), "wb") as f:
        f.write(b"DSIHFLG1")
        f.write(struct.pack("<I", len(rows_all)))
        for lg in rows_all:
            f.write(struct.pack("<II", lg.shape[0], lg.shape[1]))
            f.write(array.array("f", lg.contiguous().flatten().tolist()).tobytes())
    meta = {
        "name": name, "family": family, "prompts": prompts, "greedy": greedy_all,
        "greedy_margins": margins_all, "hf_generate": hf_gen,
        "hf_generate_matches_greedy": [a == b for a, b in zip(hf_gen, greedy_all)],
        "rope": ri, "vocab_size": vocab,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "seed": seed,
    }
    with open(os.path.join(out, name + ".ref.json"), "w") as f:
        json.dump(meta, f, indent=1)
    size = sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d))
    log("%-16s ok: vocab %d, dir %d bytes, min margin %.4g, generate==greedy %s" %
        (name, vocab, size, min(min(m) for m in margins_all), meta["hf_generate_matches_greedy"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    os.makedirs(a.out, exist_ok=True)
    log("torch %s transformers %s" % (torch.__version__, transformers.__version__))
    failed = 0
    for i, (name, fam, kw, rope, theta) in enumerate(MODELS):
        try:
            gen_one(a.out, name, fam, kw, rope, theta, 1000 + i)
        except Exception:
            failed += 1
            log("%s FAILED:\n%s" % (name, traceback.format_exc()))
    try:
        d = os.path.join(a.out, "tiny-chat")
        os.makedirs(d, exist_ok=True)
        tok, ids = train_tokenizer(d)
        kw = dict(vocab_size=tok.get_vocab_size(), hidden_size=128, intermediate_size=256, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=True)
        gen_one(a.out, "tiny-chat", "qwen2", kw, None, 1000000.0, 2000, tok, ids)
        log("tiny-chat specials %s, vocab %d" % (ids, tok.get_vocab_size()))
    except Exception:
        failed += 1
        log("tiny-chat FAILED:\n%s" % traceback.format_exc())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
