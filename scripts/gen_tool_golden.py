#!/usr/bin/env python3
"""gen_tool_golden.py: HF renderings of conversations with tools (issue 22).

    gen_tool_golden.py TOKDIR OUTDIR

With python3 + transformers 5.x (the GPU machine, as gen_tok_golden.py): for
each tokenizer folder TOKDIR/{deepseek-v3,qwen2} (tests/data/tokenizers) writes
OUTDIR/chat_tools_<name>.json: for each conversation below, the messages, the
tools, add_generation_prompt, and what the tokenizer's own chat_template renders
with apply_chat_template(messages, tools=tools): "text" and "ids" (the text
encoded without special tokens added), or "error" when the template refuses the
case. The conversations cover a full round trip: a user question, an assistant
turn with tool_calls (one and two calls, content null, empty or text), the role
"tool" results, and the final answer. tests/test_tok.c checks the C renderer of
the native tool syntax (src/tok/tok_chat.c) against these files.

Without transformers (no PyPI here), the template is rendered with jinja2 set up
the way transformers compiles chat templates: a sandboxed immutable environment
with trim_blocks and lstrip_blocks, the loopcontrols extension, a tojson filter
that is json.dumps with ensure_ascii=False (not jinja's HTML-escaping one),
raise_exception and strftime_now globals, and the tokenizer's special tokens
(bos_token, eos_token, ...) as variables. Such files record "renderer":
"jinja2 <version>" and carry no "ids" (only HF's tokenizers library makes
reference ids; the C test then checks our encoding of the text instead).

The file starts with {"magic": "dsinfer-tok-golden", "version": 1, ...} like the
other tokenizer goldens, with the renderer and library versions used.
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
    asked = {"role": "assistant", "content": None, "tool_calls": one}
    result = {"role": "tool", "tool_call_id": "call_0", "content": "-3 C, snow"}
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
        # OpenAI clients send content null with tool_calls
        ("null_content_round_trip", [
            user, asked, result,
            {"role": "assistant", "content": "It is -3 C with snow in Oslo."}], True),
        ("null_content_two_calls_pending", [
            sys_msg, user, {"role": "assistant", "content": None, "tool_calls": two},
            result, {"role": "tool", "tool_call_id": "call_1", "content": "14:05"}], True),
        ("null_content_two_rounds", [
            user, asked, result,
            {"role": "assistant", "content": None, "tool_calls": [call(1, "get_time", a({"city": "Oslo"}))]},
            {"role": "tool", "tool_call_id": "call_1", "content": "14:05"},
            {"role": "assistant", "content": "-3 C and snow; it is 14:05."},
            {"role": "user", "content": "And in Bergen?"}], True),
    ]


def token_str(v):
    """A special token of tokenizer_config.json: a string or an AddedToken dict."""
    return v.get("content") if isinstance(v, dict) else v


def jinja2_renderer(d):
    """render(msgs, gen) for the chat template of folder d, set up as transformers
    compiles chat templates (see the module comment)."""
    import datetime
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    with open(os.path.join(d, "tokenizer_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    tmpl = env.from_string(cfg["chat_template"])
    specials = {k: token_str(cfg.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    specials["additional_special_tokens"] = [token_str(v) for v in cfg.get("additional_special_tokens", [])]

    def render(msgs, gen):
        return tmpl.render(messages=msgs, tools=TOOLS, documents=None, add_generation_prompt=gen, **specials)
    return render


def main(tokdir, outdir):
    try:
        import transformers
        from transformers import AutoTokenizer
        from tokenizers import Tokenizer
        import tokenizers
        hdr = dict(MAGIC, renderer="transformers", tokenizers=tokenizers.__version__,
                   transformers=transformers.__version__)
    except ImportError:
        import jinja2
        transformers = None
        hdr = dict(MAGIC, renderer="jinja2 " + jinja2.__version__)
    os.makedirs(outdir, exist_ok=True)
    for name in ("deepseek-v3", "qwen2"):
        d = os.path.join(tokdir, name)
        if transformers:
            tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
            at = AutoTokenizer.from_pretrained(d)

            def render(msgs, gen):
                return at.apply_chat_template(msgs, tools=TOOLS, tokenize=False, add_generation_prompt=gen)
        else:
            render = jinja2_renderer(d)
        out = dict(hdr, tokenizer=name, tools=TOOLS, cases=[])
        for args_as_string in (False, True):
            for cname, msgs, gen in conversations(args_as_string):
                case = {"conv": cname, "arguments_as_string": args_as_string, "messages": msgs,
                        "add_generation_prompt": gen}
                try:
                    case["text"] = render(msgs, gen)
                    if transformers:
                        case["ids"] = tok.encode(case["text"], add_special_tokens=False).ids
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
