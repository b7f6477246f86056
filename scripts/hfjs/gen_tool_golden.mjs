#!/usr/bin/env node
/*
 * gen_tool_golden.mjs: Hugging Face's renderings of conversations with tools
 * (issue 22), made with HF's own JS stack: @huggingface/transformers
 * (transformers.js) AutoTokenizer.apply_chat_template, which compiles the
 * tokenizer's chat_template with @huggingface/jinja, and its tokenizer
 * (@huggingface/tokenizers) for the reference ids.
 *
 *   cd scripts/hfjs && npm ci --ignore-scripts
 *   node scripts/hfjs/gen_tool_golden.mjs TOKDIR OUTDIR
 *       e.g. tests/data/tokenizers (after cmake unpacked tokenizer.json) tests/golden/tok
 *   node scripts/hfjs/gen_tool_golden.mjs check TOKDIR GOLDENDIR
 *
 * The first form writes OUTDIR/chat_tools_{deepseek-v3,qwen2}.json from the
 * tools and conversations of scripts/tool_conversations.json (the one list the
 * Python fallback scripts/gen_tool_golden.py reads too): every conversation
 * twice, tool-call arguments as objects and as JSON strings (as the OpenAI API
 * sends them), each case with "text" (apply_chat_template, tokenize false) and
 * "ids" (that text encoded without special tokens added, as apply_chat_template
 * with tokenize true does), or "error" where the template refuses the case.
 * The header records the package versions.
 *
 * The second form checks this JS stack against the goldens made with Python
 * transformers + tokenizers on the GPU machine (scripts/gen_tok_golden.py):
 * the "file" template cases of chat_<name>.json (text and ids) and every line
 * of ids_<name>.jsonl. It prints each difference and exits 1 if there is one.
 * That is how we know the JS renderer agrees with Python's on these templates.
 *
 * Nothing is fetched: the tokenizers are loaded from TOKDIR with remote models
 * off. No model runtime is used, so onnxruntime's install script (which
 * downloads binaries) is skipped with --ignore-scripts.
 */
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { env, AutoTokenizer } from "@huggingface/transformers";

const HERE = dirname(fileURLToPath(import.meta.url));
const NAMES = ["deepseek-v3", "qwen2"];
const MAGIC = { magic: "dsinfer-tok-golden", version: 1 };
/* Where JS and Python jinja part: `'text' + obj` is a TypeError in Python's
 * jinja2 (which Python transformers renders with), but @huggingface/jinja
 * 0.5.13 coerces the object the JS way, "text[object Map]". DeepSeek-V3's
 * template concatenates tool-call arguments when content is null, so with
 * object arguments Python refuses the case and JS renders garbage: recorded as
 * Python's refusal. (Also seen, not hit by these templates: `{{ obj }}` prints
 * JSON in JS and Python's repr in jinja2.) No message or tool here contains
 * "[object ", so the test below cannot misfire. */
const JS_CONCAT_ERROR =
  "TypeError in Python's jinja2 (str + dict); @huggingface/jinja renders the object as \"[object Map]\"";

function pkgVersion(name) {
  return JSON.parse(readFileSync(join(HERE, "node_modules", name, "package.json"), "utf8")).version;
}

async function loadTokenizer(tokdir, name) {
  env.allowRemoteModels = false;
  env.allowLocalModels = true;
  env.localModelPath = resolve(tokdir) + "/";
  return AutoTokenizer.from_pretrained(name);
}

/* The conversation with each tool call's arguments parsed into an object
 * (Qwen's template prints an object with tojson; V3's concatenates a string). */
function withObjectArguments(msgs) {
  return msgs.map((m) =>
    m.tool_calls
      ? { ...m, tool_calls: m.tool_calls.map((c) => ({ ...c, function: { ...c.function, arguments: JSON.parse(c.function.arguments) } })) }
      : m,
  );
}

async function generate(tokdir, outdir) {
  const spec = JSON.parse(readFileSync(join(HERE, "..", "tool_conversations.json"), "utf8"));
  const hdr = {
    ...MAGIC,
    renderer: `@huggingface/transformers ${pkgVersion("@huggingface/transformers")}`,
    jinja: `@huggingface/jinja ${pkgVersion("@huggingface/jinja")}`,
    tokenizers: `@huggingface/tokenizers ${pkgVersion("@huggingface/tokenizers")}`,
  };
  mkdirSync(outdir, { recursive: true });
  for (const name of NAMES) {
    const tok = await loadTokenizer(tokdir, name);
    const out = { ...hdr, tokenizer: name, tools: spec.tools, cases: [] };
    for (const asString of [false, true]) {
      for (const cv of spec.conversations) {
        const msgs = asString ? cv.messages : withObjectArguments(cv.messages);
        const c = { conv: cv.conv, arguments_as_string: asString, messages: msgs, add_generation_prompt: cv.add_generation_prompt };
        try {
          const text = tok.apply_chat_template(msgs, { tools: spec.tools, tokenize: false, add_generation_prompt: cv.add_generation_prompt });
          if (text.includes("[object ")) throw new Error(JS_CONCAT_ERROR);
          c.text = text;
          c.ids = tok.encode(text, { add_special_tokens: false });
        } catch (e) {
          c.error = String(e && e.message ? e.message : e);
        }
        out.cases.push(c);
      }
    }
    const path = join(outdir, `chat_tools_${name}.json`);
    writeFileSync(path, JSON.stringify(out, null, 1) + "\n");
    console.log("wrote", path, out.cases.length, "cases,", out.cases.filter((c) => c.error).length, "refused");
  }
}

function sameIds(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

async function check(tokdir, golddir) {
  let bad = 0, n = 0;
  for (const name of NAMES) {
    const tok = await loadTokenizer(tokdir, name);
    const chat = JSON.parse(readFileSync(join(golddir, `chat_${name}.json`), "utf8"));
    for (const c of chat.cases.filter((x) => x.template === "file")) {
      const text = tok.apply_chat_template(c.messages, { tokenize: false, add_generation_prompt: c.add_generation_prompt });
      const ids = tok.encode(text, { add_special_tokens: false });
      n++;
      if (text !== c.text || !sameIds(ids, c.ids)) {
        bad++;
        console.log(`${name} chat ${c.conv}: text ${text === c.text ? "same" : "differs"}, ids ${sameIds(ids, c.ids) ? "same" : "differ"}`);
      }
    }
    const lines = readFileSync(join(golddir, `ids_${name}.jsonl`), "utf8").trim().split("\n").map((l) => JSON.parse(l));
    const corpus = readFileSync(join(golddir, "corpus.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l));
    const text = new Map(corpus.filter((x) => "i" in x).map((x) => [x.i, x.text]));
    for (const g of lines.filter((x) => "i" in x)) {
      const ids = tok.encode(text.get(g.i), { add_special_tokens: false });
      n++;
      if (!sameIds(ids, g.ids)) {
        bad++;
        console.log(`${name} ids ${g.i}: ${JSON.stringify(text.get(g.i)).slice(0, 60)}`);
      }
    }
  }
  console.log(`${n - bad} of ${n} Python-made goldens reproduced`);
  return bad === 0;
}

const argv = process.argv.slice(2);
if (argv.length === 3 && argv[0] === "check") {
  process.exit((await check(argv[1], argv[2])) ? 0 : 1);
} else if (argv.length === 2) {
  await generate(argv[0], argv[1]);
} else {
  console.error("usage: gen_tool_golden.mjs TOKDIR OUTDIR | check TOKDIR GOLDENDIR");
  process.exit(2);
}
