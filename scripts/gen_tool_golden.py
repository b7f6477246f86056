#!/usr/bin/env python3
"""gen_tool_golden.py: Python renderings of conversations with tools (issue 22).

    gen_tool_golden.py TOKDIR OUTDIR

The committed goldens tests/golden/tok/chat_tools_*.json are made with HF's own
JS code (scripts/hfjs/gen_tool_golden.mjs, transformers.js), which runs here.
This is the Python twin, for cross-checking that rendering against Python's
jinja2, the engine Python transformers renders chat templates with (the two
differ in places: see the .mjs). Both read the tools and conversations from
scripts/tool_conversations.json and write the same case list: every
conversation with tool-call arguments as objects, then as JSON strings.

With python3 + transformers 5.x (the GPU machine, as gen_tok_golden.py): for
each tokenizer folder TOKDIR/{deepseek-v3,qwen2} (tests/data/tokenizers) writes
OUTDIR/chat_tools_<name>.json: for each conversation, the messages, the tools,
add_generation_prompt, and what the tokenizer's own chat_template renders with
apply_chat_template(messages, tools=tools): "text" and "ids" (the text encoded
without special tokens added), or "error" when the template refuses the case.

Without transformers (no PyPI here), the template is rendered with jinja2 set up
the way transformers compiles chat templates: a sandboxed immutable environment
with trim_blocks and lstrip_blocks, the loopcontrols extension, a tojson filter
that is json.dumps with ensure_ascii=False (not jinja's HTML-escaping one),
raise_exception and strftime_now globals, and the tokenizer's special tokens
(bos_token, eos_token, ...) as variables. Such files record "renderer":
"jinja2 <version>" and carry no "ids", so tests/test_tok_tools.c rejects them:
write them elsewhere and compare their texts with the committed ones.

The file starts with {"magic": "dsinfer-tok-golden", "version": 1, ...} like the
other tokenizer goldens, with the renderer and library versions used.
"""
import json
import os
import sys

MAGIC = {"magic": "dsinfer-tok-golden", "version": 1}
SPEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tool_conversations.json")


def load_spec():
    """(tools, [(conv, messages, add_generation_prompt)]) from tool_conversations.json."""
    with open(SPEC, encoding="utf-8") as f:
        spec = json.load(f)
    return spec["tools"], [(c["conv"], c["messages"], c["add_generation_prompt"]) for c in spec["conversations"]]


def with_object_arguments(msgs):
    """The messages with each tool call's arguments parsed into an object
    (Qwen's template prints an object with tojson; V3's concatenates a string)."""
    def call(c):
        return dict(c, function=dict(c["function"], arguments=json.loads(c["function"]["arguments"])))
    return [dict(m, tool_calls=[call(c) for c in m["tool_calls"]]) if "tool_calls" in m else m for m in msgs]


def token_str(v):
    """A special token of tokenizer_config.json: a string or an AddedToken dict."""
    return v.get("content") if isinstance(v, dict) else v


def jinja2_renderer(d, tools):
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
        return tmpl.render(messages=msgs, tools=tools, documents=None, add_generation_prompt=gen, **specials)
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
    tools, convs = load_spec()
    os.makedirs(outdir, exist_ok=True)
    for name in ("deepseek-v3", "qwen2"):
        d = os.path.join(tokdir, name)
        if transformers:
            tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
            at = AutoTokenizer.from_pretrained(d)

            def render(msgs, gen):
                return at.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=gen)
        else:
            render = jinja2_renderer(d, tools)
        out = dict(hdr, tokenizer=name, tools=tools, cases=[])
        for args_as_string in (False, True):
            for cname, msgs, gen in convs:
                msgs = msgs if args_as_string else with_object_arguments(msgs)
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
