#!/usr/bin/env python3
"""gen_tool_golden.py: HF renderings of conversations with tools (issue 22).

    gen_tool_golden.py TOKDIR OUTDIR

Runs on the GPU machine (python3 with transformers 5.x, as gen_tok_golden.py).
For each tokenizer folder TOKDIR/{deepseek-v3,qwen2} (tests/data/tokenizers)
writes OUTDIR/chat_tools_<name>.json: for each conversation below, the messages,
the tools, add_generation_prompt, and what the tokenizer's own chat_template
renders with apply_chat_template(messages, tools=tools): "text" and "ids" (the
text encoded without special tokens added), or "error" when the template refuses
the case. The conversations cover a full round trip: a user question, an
assistant turn with tool_calls (one and two calls, with and without content), the
role "tool" results, and the final answer. The C renderer of the native tool
syntax (src/tok/tok_chat.c) is to be checked against these files; dsinfer does
not render the native forms yet (docs/api.md, Tools).

The file starts with {"magic": "dsinfer-tok-golden", "version": 1, ...} like the
other tokenizer goldens, with the library versions used.
"""
import json
import os
import sys

MAGIC = {"magic": "dsinfer-tok-golden", "version": 1}

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object",
                       "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
                       "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
]


def call(i, name, args):
    # transformers templates read arguments either as a dict (Qwen) or a string
    # (DeepSeek-V3's template prints it): both spellings are generated below.
    return {"id": "call_%d" % i, "type": "function", "function": {"name": name, "arguments": args}}


def conversations(args_as_string):
    a = (lambda d: json.dumps(d, ensure_ascii=False)) if args_as_string else (lambda d: d)
    one = [call(0, "get_weather", a({"city": "Oslo", "unit": "C"}))]
    two = one + [call(1, "get_time", a({"city": "Oslo"}))]
    user = {"role": "user", "content": "What is the weather in Oslo, and the time there?"}
    sys_msg = {"role": "system", "content": "You are a helpful assistant."}
    return [
        ("tools_question", [user], True),
        ("tools_question_system", [sys_msg, user], True),
        ("one_call", [user, {"role": "assistant", "content": "", "tool_calls": one}], False),
        ("one_call_result", [user, {"role": "assistant", "content": "", "tool_calls": one},
                             {"role": "tool", "tool_call_id": "call_0", "content": "-3 C, snow"}], True),
        ("two_calls_results_answer", [
            sys_msg, user,
            {"role": "assistant", "content": "Let me check.", "tool_calls": two},
            {"role": "tool", "tool_call_id": "call_0", "content": "-3 C, snow"},
            {"role": "tool", "tool_call_id": "call_1", "content": "14:05"},
            {"role": "assistant", "content": "It is -3 C with snow in Oslo, and 14:05."},
            {"role": "user", "content": "Thanks!"}], True),
    ]


def main(tokdir, outdir):
    from tokenizers import Tokenizer
    import tokenizers
    import transformers
    from transformers import AutoTokenizer
    os.makedirs(outdir, exist_ok=True)
    hdr = dict(MAGIC, tokenizers=tokenizers.__version__, transformers=transformers.__version__)
    for name in ("deepseek-v3", "qwen2"):
        d = os.path.join(tokdir, name)
        tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        at = AutoTokenizer.from_pretrained(d)
        out = dict(hdr, tokenizer=name, tools=TOOLS, cases=[])
        for args_as_string in (False, True):
            for cname, msgs, gen in conversations(args_as_string):
                case = {"conv": cname, "arguments_as_string": args_as_string, "messages": msgs,
                        "add_generation_prompt": gen}
                try:
                    txt = at.apply_chat_template(msgs, tools=TOOLS, tokenize=False, add_generation_prompt=gen)
                    case["text"] = txt
                    case["ids"] = tok.encode(txt, add_special_tokens=False).ids
                except Exception as e:  # noqa: BLE001 - a template may refuse a spelling: record it
                    case["error"] = repr(e)
                out["cases"].append(case)
        path = os.path.join(outdir, "chat_tools_%s.json" % name)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(out, f, ensure_ascii=False, indent=1)
        print("wrote", path, len(out["cases"]), "cases")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: gen_tool_golden.py TOKDIR OUTDIR  (e.g. tests/data/tokenizers tests/golden/tok)")
    main(sys.argv[1], sys.argv[2])
