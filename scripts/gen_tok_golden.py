#!/usr/bin/env python3
"""gen_tok_golden.py: corpus and golden outputs for the dsinfer tokenizer tests.

Two modes:
  gen_tok_golden.py corpus OUT.jsonl
      Writes the test corpus (deterministic, built from the lists below): one JSON
      object per line, {"i": index, "text": "..."}.  Run here; the result is committed
      as tests/golden/tok/corpus.jsonl.
  gen_tok_golden.py golden TOKDIR CORPUS OUTDIR
      Runs on the GPU machine (python3 with tokenizers 0.23 and transformers 5.x).
      For each tokenizer folder TOKDIR/{deepseek-v3,qwen2} writes
        ids_<name>.jsonl   {"i", "ids", "decoded", "decoded_skip"} per corpus text, encode
                           with add_special_tokens=False, decode with skip_special_tokens
                           False / True
        chat_<name>.json   apply_chat_template text and ids for a set of conversations
                           under each chat template we render in C
      and bench.txt: HF tokenizers single-thread encode speed on the 10 MB bench text
      (bench_text(), the same generator bench/tok_bench.c uses).

  gen_tok_golden.py nfc-tables OUT.c
      Writes src/tok/tok_nfc_data.c, the Unicode tables of the NFC normalizer (from
      Python's unicodedata; its Unicode version is recorded in the file).

Golden files carry a header line {"magic": "dsinfer-tok-golden", "version": 1, ...}.
"""
import json
import os
import sys

# HF tokenizers uses rayon for encode_batch: pin it to one thread for a fair
# single-thread comparison.  Must be set before the library is imported.
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("RAYON_RS_NUM_CPUS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MAGIC = {"magic": "dsinfer-tok-golden", "version": 1}
BENCH_BYTES = 10 * 1000 * 1000


def build_corpus():
    t = []
    en = [
        "Hello world", "Hello, world!", "The quick brown fox jumps over the lazy dog.",
        "I'm sure you'll like it; they've said it's what we'd do.",
        "DON'T SHOUT. It'S ThE Way'Ve", "don't won't can't shouldn't y'all",
        "  leading spaces", "trailing spaces   ", "multiple     inner     spaces",
        "tab\tseparated\tvalues\t", "line one\nline two\n\nline four",
        "windows\r\nline\r\nendings\r\n", "mixed \t \n \r\n whitespace \u00a0 nbsp",
        "\n\n\n", " ", "  ", "\t", "\r\n", "a", "I", "?", "!!!", "...", "--", "e.g. i.e. etc.",
        "Mr. O'Neil's dog's bone.", "It costs $3.50 (or \u20ac3,20) \u2014 cheap!",
        "email: someone@example.com, url: https://example.com/a/b?c=d&e=f#g",
        "Title Case Words Everywhere", "camelCaseIdentifier snake_case_identifier kebab-case",
        "CONSTANT_VALUE = 42", "#hashtag @mention", "[brackets] {braces} (parens) <angles>",
        "\"double quotes\" and 'single quotes' and `backticks`",
        "Unicode quotes \u201chello\u201d \u2018world\u2019", "ellipsis\u2026 and em\u2014dash and en\u2013dash",
        "The year 2024 was followed by 2025.", "Version 1.2.3-beta+build.45",
        "A sentence with a very long word: pneumonoultramicroscopicsilicovolcanoconiosis.",
        "Supercalifragilisticexpialidocious", "antidisestablishmentarianism",
        "The \u00e9l\u00e8ve went to the caf\u00e9 na\u00efve r\u00e9sum\u00e9 fa\u00e7ade.",
        "Stra\u00dfe \u00fcber \u00e4rger \u00f6ffnen Gr\u00fc\u00dfe", "se\u00f1or ni\u00f1o ma\u00f1ana \u00bfqu\u00e9? \u00a1s\u00ed!",
        "\u00c5ngstr\u00f6m \u00d8resund \u00e6bler", "Zo\u00eb Bront\u00eb co\u00f6perate",
        "Combining: e\u0301 a\u0300 o\u0308 n\u0303 (NFD forms)", "Ca\u0301fe\u0301 decomposed",
        "ligatures \ufb01 \ufb02 and fullwidth \uff21\uff22\uff23 \uff11\uff12\uff13",
        "Roman numerals \u2160 \u2161 \u2162, superscripts x\u00b2 y\u00b3, fractions \u00bd \u00bc",
        "Math: \u2200x \u2208 \u211d, x\u00b2 \u2265 0; \u2211 \u222b \u221a \u221e \u2260 \u2248",
        "Greek: \u0391\u03b8\u03ae\u03bd\u03b1 \u03ba\u03b1\u03bb\u03b7\u03bc\u03ad\u03c1\u03b1",
        "Hebrew: \u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd", "Thai: \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e04\u0e23\u0e31\u0e1a",
        "Vietnamese: Ti\u1ebfng Vi\u1ec7t c\u00f3 d\u1ea5u", "Turkish: \u0130stanbul \u0131\u015f\u0131k \u011f\u00fc\u00e7",
        "Polish: Za\u017c\u00f3\u0142\u0107 g\u0119\u015bl\u0105 ja\u017a\u0144", "Czech: P\u0159\u00edli\u0161 \u017elu\u0165ou\u010dk\u00fd k\u016f\u0148",
    ]
    t += en
    zh = [
        "\u4f60\u597d\uff0c\u4e16\u754c\uff01", "\u6211\u7231\u5317\u4eac\u5929\u5b89\u95e8\u3002",
        "\u6df1\u5ea6\u6c42\u7d22\u662f\u4e00\u5bb6\u4eba\u5de5\u667a\u80fd\u516c\u53f8\u3002",
        "\u4eca\u5929\u5929\u6c14\u5f88\u597d\uff0c\u6211\u4eec\u53bb\u516c\u56ed\u6563\u6b65\u5427\u3002",
        "\u4e2d\u6587\u548cEnglish\u6df7\u5408text\u6d4b\u8bd5",
        "\u6570\u5b57123\u548c\u6c49\u5b57\u6df7\u5408456\u6d4b\u8bd5",
        "\u300a\u7ea2\u697c\u68a6\u300b\u662f\u4e2d\u56fd\u53e4\u5178\u5c0f\u8bf4\u3002",
        "\u673a\u5668\u5b66\u4e60\u3001\u6df1\u5ea6\u5b66\u4e60\u548c\u81ea\u7136\u8bed\u8a00\u5904\u7406",
        "\u7e41\u9ad4\u4e2d\u6587\uff1a\u81fa\u7063\u7684\u570b\u8a9e\u8207\u9999\u6e2f\u7684\u5ee3\u6771\u8a71",
        "\u8fd9\u662f\u4e00\u4e2a\u5f88\u957f\u7684\u53e5\u5b50\uff0c" * 8,
        "\u9f98\u9f49\u9f96\u9f8d \u7f55\u89c1\u5b57 \U00020BB7 \u4e00", "\u3000\u5168\u89d2\u7a7a\u683c\u3000\u6d4b\u8bd5\u3000",
        "\u5f15\u53f7\u201c\u4e2d\u6587\u201d\u548c\u2018\u5355\u5f15\u53f7\u2019\uff1f\uff01\uff1b\uff1a",
    ]
    t += zh
    ja = [
        "\u3053\u3093\u306b\u3061\u306f\u4e16\u754c", "\u30ab\u30bf\u30ab\u30ca\u3068\u3072\u3089\u304c\u306a\u3068\u6f22\u5b57",
        "\u6771\u4eac\u90fd\u6e0b\u8c37\u533a\u3067\u30e9\u30fc\u30e1\u30f3\u3092\u98df\u3079\u307e\u3057\u305f\u3002",
        "\u543e\u8f29\u306f\u732b\u3067\u3042\u308b\u3002\u540d\u524d\u306f\u307e\u3060\u7121\u3044\u3002",
        "\uff8a\uff9d\uff76\uff78\uff76\uff80\uff76\uff85 \u534a\u89d2\u30ab\u30ca", "\u30b3\u30f3\u30d4\u30e5\u30fc\u30bf\u30fc\u30fb\u30b5\u30a4\u30a8\u30f3\u30b9",
        "\u65e5\u672c\u8a9e\u3068English\u306e\u6df7\u5728\u30c6\u30ad\u30b9\u30c8\u3002",
        "\u3072\u3089\u304c\u306a\u3060\u3051\u306e\u3076\u3093\u3057\u3087\u3046\u3067\u3059",
    ]
    t += ja
    ko = [
        "\uc548\ub155\ud558\uc138\uc694 \uc138\uacc4", "\ud55c\uad6d\uc5b4\ub294 \ud55c\uae00\ub85c \uc501\ub2c8\ub2e4.",
        "\ub300\ud55c\ubbfc\uad6d\uc758 \uc218\ub3c4\ub294 \uc11c\uc6b8\uc785\ub2c8\ub2e4.",
        "\uc778\uacf5\uc9c0\ub2a5 \ubaa8\ub378\uc744 \ud6c8\ub828\ud569\ub2c8\ub2e4 123\uac1c",
        "\u1100\u1161\u11a8 conjoining jamo", "\ud55c\uae00 mixed with English \uadf8\ub9ac\uace0 \uc22b\uc790 2024",
    ]
    t += ko
    ar = [
        "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645", "\u0627\u0644\u0644\u063a\u0629 \u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u062c\u0645\u064a\u0644\u0629 \u062c\u062f\u0627\u064b.",
        "\u0628\u0650\u0633\u0652\u0645\u0650 \u0627\u0644\u0644\u0651\u064e\u0647\u0650 \u0627\u0644\u0631\u0651\u064e\u062d\u0652\u0645\u064e\u0670\u0646\u0650",
        "\u0627\u0644\u0639\u062f\u062f \u0661\u0662\u0663\u0664\u0665 \u0648 12345", "\u0641\u0627\u0631\u0633\u06cc: \u0633\u0644\u0627\u0645 \u062f\u0646\u06cc\u0627",
    ]
    t += ar
    hi = [
        "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e", "\u0939\u093f\u0928\u094d\u0926\u0940 \u092d\u093e\u0937\u093e \u092c\u0939\u0941\u0924 \u0938\u0941\u0902\u0926\u0930 \u0939\u0948\u0964",
        "\u0915\u094d\u0937\u0924\u094d\u0930\u093f\u092f \u0936\u094d\u0930\u0940 \u091c\u094d\u091e\u093e\u0928", "\u0967\u0968\u0969 \u0905\u0902\u0915 \u0914\u0930 123",
        "\u09ac\u09be\u0982\u09b2\u09be \u09ad\u09be\u09b7\u09be", "\u0ba4\u0bae\u0bbf\u0bb4\u0bcd \u0bae\u0bca\u0bb4\u0bbf",
    ]
    t += hi
    ru = [
        "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440!", "\u0421\u044a\u0435\u0448\u044c \u0436\u0435 \u0435\u0449\u0451 \u044d\u0442\u0438\u0445 \u043c\u044f\u0433\u043a\u0438\u0445 \u0444\u0440\u0430\u043d\u0446\u0443\u0437\u0441\u043a\u0438\u0445 \u0431\u0443\u043b\u043e\u043a.",
        "\u041c\u043e\u0441\u043a\u0432\u0430 \u2014 \u0441\u0442\u043e\u043b\u0438\u0446\u0430 \u0420\u043e\u0441\u0441\u0438\u0438.", "\u0423\u043a\u0440\u0430\u0457\u043d\u0441\u044c\u043a\u0430 \u043c\u043e\u0432\u0430: \u0457\u0436\u0430\u043a, \u0491\u0430\u043d\u043e\u043a",
        "\u0414\u043e\u0441\u0442\u043e\u043f\u0440\u0438\u043c\u0435\u0447\u0430\u0442\u0435\u043b\u044c\u043d\u043e\u0441\u0442\u0438 \u0433\u043e\u0440\u043e\u0434\u0430", "\u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 \u0435\u0437\u0438\u043a",
    ]
    t += ru
    code = [
        "def add(a, b):\n    return a + b\n",
        "import numpy as np\n\nx = np.arange(10)\nprint(x.sum())\n",
        "class Foo(Bar):\n    def __init__(self, *args, **kwargs):\n        super().__init__(*args, **kwargs)\n        self._x = None\n",
        "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
        "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }\n",
        "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n",
        "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hi\")\n}\n",
        "const f = async (x) => { await fetch(`/api/${x}`); return x ?? null; };",
        "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son' ORDER BY id DESC;",
        "<html>\n  <body>\n    <div class=\"a\">Hello</div>\n  </body>\n</html>",
        "{\"key\": [1, 2, 3], \"nested\": {\"a\": null, \"b\": true}}",
        "#!/bin/bash\nset -euo pipefail\nfor f in *.txt; do echo \"$f\"; done\n",
        "public static void main(String[] args) { System.out.println(\"Hello\"); }",
        "x <- c(1, 2, 3)\nmean(x)\n", "    \n    indented blank line\n        deeper\n",
        "if x == 1:\n\tpass\nelif x != 2:\n\t\tpass\n", "a+=1;b-=2;c*=3;d/=4;e%=5;f**=6;g//=7",
        "// comment\n/* block\n   comment */\n", "    return;    \n\n\n    }   \n",
        "std::vector<std::string> v{\"a\", \"b\"}; auto it = v.begin();",
        "lambda x: x if x > 0 else -x", "0x1F 0b1010 0o777 1e-10 3.14159f 1_000_000",
        "#define MAX(a,b) ((a)>(b)?(a):(b))", "$ ls -la | grep '^d' | awk '{print $9}'",
        "matrix = [[1, 2], [3, 4]]\nresult = [[sum(a*b for a,b in zip(r,c)) for c in zip(*matrix)] for r in matrix]",
        "```python\nprint('fenced')\n```", "<|im_start|>fake special in code? <｜User｜>",
    ]
    t += code
    nums = []
    for n in range(1, 25):
        nums.append("".join(str((i * 7 + n) % 10) for i in range(n)))
    nums += ["0", "00", "000", "0000", "1234567890123456789012345678901234567890",
             "3.141592653589793", "-42", "+1 (555) 123-4567", "1,000,000.00", "10^9+7",
             "2024-01-15T12:34:56Z", "192.168.0.1", "\u2460\u2461\u2462 \u00b9\u00b2\u00b3 \u0661\u0662\u0663 \u0967\u0968\u0969 \uff11\uff12\uff13",
             "1 22 333 4444 55555 666666 7777777", "a1b2c3d4e5", "x123456y", "12abc34def5678"]
    t += nums
    emoji = [
        "\U0001F600", "\U0001F44D\U0001F3FB\U0001F44D\U0001F3FC\U0001F44D\U0001F3FD\U0001F44D\U0001F3FE\U0001F44D\U0001F3FF",
        "\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466 family", "\U0001F3F3\uFE0F\u200D\U0001F308 flag",
        "\U0001F1FA\U0001F1F8\U0001F1EF\U0001F1F5\U0001F1E8\U0001F1F3 flags", "I \u2764\uFE0F you \U0001F618\U0001F618",
        "\U0001F469\U0001F3FD\u200D\U0001F4BB coder", "\u270C\U0001F3FF peace", "text\U0001F600text\U0001F600text",
        "\U0001F9D1\u200D\U0001F91D\u200D\U0001F9D1 \U0001F46B", "#\uFE0F\u20E3 1\uFE0F\u20E3 keycaps",
        "\U0001F431\U0001F436\U0001F42D\U0001F439\U0001F430\U0001F98A\U0001F43B\U0001F43C", "emoji at end \U0001F680",
    ]
    t += emoji
    specials_ds = [
        "<｜begin▁of▁sentence｜>Hello", "Hi<｜end▁of▁sentence｜>", "<｜User｜>What is 2+2?<｜Assistant｜>4<｜end▁of▁sentence｜>",
        "<think>\nreasoning here\n</think>\n\nanswer", "a<｜User｜>b<｜User｜><｜User｜>c",
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f", "partial <｜User not special",
        "<｜fim▁begin｜>code<｜fim▁hole｜>more<｜fim▁end｜>", " <｜Assistant｜> spaced ",
    ]
    specials_qw = [
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>", "x<|endoftext|>y",
        "<|im_start|><|im_end|>", "<|im_start", "<tool_call>\n{}\n</tool_call>", "<|vision_start|><|image_pad|><|vision_end|>",
        "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>", "  <|im_end|>  ",
    ]
    t += specials_ds + specials_qw
    longw = ["a" * 1000, "ab" * 700, "x" * 5000 + " y", "\u4e2d" * 600, "1" * 1000, " " * 500 + "z",
             "\n" * 300, "!" * 400, "Hello" * 300, "\U0001F600" * 200, "abc " * 500, "\t " * 300]
    t += longw
    # Generated mixes: deterministic so the corpus is reproducible.
    words = ["the", "of", "and", "\u4e2d\u6587", "\u65e5\u672c", "\ud55c\uad6d", "\u043c\u0438\u0440", "\u0639\u0627\u0644\u0645",
             "\u0926\u0941\u0928\u093f\u092f\u093e", "42", "3.14", "\U0001F600", "foo_bar", "x+=1", "'s", "'LL", "\n", "\t", "  ", "\r\n",
             "caf\u00e9", "na\u00efve", "\u00a0", "--", "//", "::", "->", "()", "{}", "[]", "\u3002", "\uff0c"]
    state = 0x2545F4914F6CDD1D
    while len(t) < 330:
        parts = []
        for _ in range(3 + len(t) % 17):
            state ^= (state << 13) & 0xFFFFFFFFFFFFFFFF
            state ^= state >> 7
            state ^= (state << 17) & 0xFFFFFFFFFFFFFFFF
            w = words[state % len(words)]
            parts.append(w if (state >> 20) % 3 else " " + w)
        t.append("".join(parts))
    t.append("")
    return t


def bench_text(texts):
    """The bench text: corpus texts in order, cycled, each followed by '\\n', until the
    total reaches BENCH_BYTES UTF-8 bytes.  Returns the list of pieces (each text + '\\n').
    bench/tok_bench.c builds the same list from corpus.jsonl."""
    pieces, total, i = [], 0, 0
    while total < BENCH_BYTES:
        p = texts[i % len(texts)] + "\n"
        pieces.append(p)
        total += len(p.encode("utf-8"))
        i += 1
    return pieces


def load_corpus(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            o = json.loads(line)
            if "text" in o:
                out.append(o["text"])
    return out


def conversations():
    think = "<think>\nThe user asks for 2+2. That is 4.\n</think>\n\nThe answer is 4."
    return [
        ("single_user", [{"role": "user", "content": "Hello!"}], True),
        ("system_user", [{"role": "system", "content": "You are a helpful assistant."},
                         {"role": "user", "content": "What is the capital of France?"}], True),
        ("multi_turn", [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hello! How can I help?"},
                        {"role": "user", "content": "Tell me a joke \U0001F600 \u4e2d\u6587"}], True),
        ("assistant_think", [{"role": "user", "content": "What is 2+2?"},
                             {"role": "assistant", "content": think},
                             {"role": "user", "content": "And 3+3?"}], True),
        ("ends_with_assistant", [{"role": "user", "content": "Say hi"},
                                 {"role": "assistant", "content": "hi"}], False),
        ("ends_with_assistant_think", [{"role": "user", "content": "Q"},
                                       {"role": "assistant", "content": think}], False),
        ("two_systems", [{"role": "system", "content": "First."}, {"role": "system", "content": "Second."},
                         {"role": "user", "content": "Go"}], True),
        ("no_gen_prompt", [{"role": "user", "content": "  spaced \n content\n"}], False),
    ]


def templates(name, cfg_template):
    """The chat templates whose output the C renderer must equal, per tokenizer."""
    out = {"file": cfg_template}
    if name == "deepseek-v3":
        # DeepSeek-R1 / R1-Distill: V3's template with the two R1 changes: earlier
        # assistant turns lose their <think> block, and generation opens <think>\n.
        old_asst = "{{'<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}"
        new_asst = ("{% set content = message['content'] %}{% if '</think>' in content %}"
                    "{% set content = content.split('</think>')[-1] %}{% endif %}"
                    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}")
        old_gen = "{{'<｜Assistant｜>'}}{% endif %}"
        new_gen = "{{'<｜Assistant｜><think>\\n'}}{% endif %}"
        assert cfg_template.count(old_asst) == 1 and cfg_template.count(old_gen) == 1
        out["r1"] = cfg_template.replace(old_asst, new_asst).replace(old_gen, new_gen)
        out["llm"] = ("{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
                      "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
                      "{{ 'User: ' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}"
                      "{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}"
                      "{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
                      "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
        out["coder"] = (
            "{% if not add_generation_prompt is defined %}\n{% set add_generation_prompt = false %}\n{% endif %}\n"
            "{%- set ns = namespace(found=false) -%}\n{%- for message in messages -%}\n"
            "    {%- if message['role'] == 'system' -%}\n        {%- set ns.found = true -%}\n    {%- endif -%}\n"
            "{%- endfor -%}\n{{bos_token}}{%- if not ns.found -%}\n"
            "{{'You are an AI programming assistant, utilizing the Deepseek Coder model, developed by Deepseek "
            "Company, and you only answer questions related to computer science. For politically sensitive "
            "questions, security and privacy issues, and other non-computer science questions, you will refuse "
            "to answer\\n'}}\n{%- endif %}\n{%- for message in messages %}\n    {%- if message['role'] == 'system' %}\n"
            "{{ message['content'] }}\n    {%- else %}\n        {%- if message['role'] == 'user' %}\n"
            "{{'### Instruction:\\n' + message['content'] + '\\n'}}\n        {%- else %}\n"
            "{{'### Response:\\n' + message['content'] + '\\n<|EOT|>\\n'}}\n        {%- endif %}\n    {%- endif %}\n"
            "{%- endfor %}\n{% if add_generation_prompt %}\n{{'### Response:'}}\n{% endif %}")
    if name == "qwen2":
        # Plain ChatML (transformers' classic default template; our demo model's format).
        out["chatml"] = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                         "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
                         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    return out


def golden(tokdir, corpus_path, outdir):
    import time
    import tokenizers
    from tokenizers import Tokenizer
    os.makedirs(outdir, exist_ok=True)
    texts = load_corpus(corpus_path)
    report = []
    try:
        import transformers
        tf_version = transformers.__version__
    except Exception as e:  # noqa: BLE001 - record and go on: ids are the main product
        transformers, tf_version = None, "unavailable: %r" % (e,)
    hdr = dict(MAGIC, tokenizers=tokenizers.__version__, transformers=tf_version)
    for name in ("deepseek-v3", "qwen2"):
        d = os.path.join(tokdir, name)
        tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        with open(os.path.join(outdir, "ids_%s.jsonl" % name), "w", encoding="utf-8") as f:
            f.write(json.dumps(dict(hdr, tokenizer=name, n=len(texts))) + "\n")
            for i, s in enumerate(texts):
                ids = tok.encode(s, add_special_tokens=False).ids
                dec = tok.decode(ids, skip_special_tokens=False)
                dec_skip = tok.decode(ids, skip_special_tokens=True)
                f.write(json.dumps({"i": i, "ids": ids, "decoded": dec, "decoded_skip": dec_skip},
                                   ensure_ascii=False) + "\n")
        cfg = json.load(open(os.path.join(d, "tokenizer_config.json"), encoding="utf-8"))
        chat = dict(hdr, tokenizer=name, cases=[])
        try:
            from transformers import AutoTokenizer
            at = AutoTokenizer.from_pretrained(d)
            for tname, tmpl in templates(name, cfg["chat_template"]).items():
                for cname, msgs, gen in conversations():
                    case = {"template": tname, "conv": cname, "messages": msgs, "add_generation_prompt": gen}
                    try:
                        txt = at.apply_chat_template(msgs, chat_template=tmpl, tokenize=False,
                                                     add_generation_prompt=gen)
                        case["text"] = txt
                        case["ids"] = tok.encode(txt, add_special_tokens=False).ids
                        r = at.apply_chat_template(msgs, chat_template=tmpl, tokenize=True,
                                                   add_generation_prompt=gen)
                        if hasattr(r, "keys") and "input_ids" in r:
                            r = r["input_ids"]
                        case["ids_transformers"] = list(r)
                    except Exception as e:  # noqa: BLE001
                        case["error"] = repr(e)
                    chat["cases"].append(case)
        except Exception as e:  # noqa: BLE001
            chat["error"] = repr(e)
        with open(os.path.join(outdir, "chat_%s.json" % name), "w", encoding="utf-8") as f:
            json.dump(chat, f, ensure_ascii=False, indent=1)
        # Speed: single thread, the same 10 MB text as bench/tok_bench.c.
        pieces = bench_text(texts)
        nbytes = sum(len(p.encode("utf-8")) for p in pieces)
        whole = "".join(pieces)
        t0 = time.perf_counter()
        for p in pieces:
            tok.encode(p, add_special_tokens=False)
        t_loop = time.perf_counter() - t0
        t0 = time.perf_counter()
        tok.encode_batch(pieces, add_special_tokens=False)
        t_batch = time.perf_counter() - t0
        t0 = time.perf_counter()
        n_whole = len(tok.encode(whole, add_special_tokens=False).ids)
        t_whole = time.perf_counter() - t0
        report.append("%s bytes=%d pieces=%d tokens=%d encode_loop=%.2f MB/s encode_batch(1 thread)=%.2f MB/s "
                      "encode_whole=%.2f MB/s" % (name, nbytes, len(pieces), n_whole, nbytes / t_loop / 1e6,
                                                   nbytes / t_batch / 1e6, nbytes / t_whole / 1e6))
    with open(os.path.join(outdir, "bench.txt"), "w") as f:
        f.write("tokenizers %s, RAYON_NUM_THREADS=%s, cpus=%s\n" % (tokenizers.__version__,
                os.environ.get("RAYON_NUM_THREADS"), os.cpu_count()))
        f.write("\n".join(report) + "\n")
    print("\n".join(report))


def nfc_tables(path):
    """Canonical combining classes, full canonical decompositions and the primary
    composites, as C arrays for src/tok/tok_nfc.c."""
    import unicodedata as ud
    ccc, decomp, pairs = [], [], []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF or 0xAC00 <= cp <= 0xD7A3:
            continue  # surrogates; Hangul syllables are done by arithmetic
        ch = chr(cp)
        c = ud.combining(ch)
        if c:
            ccc.append((cp, c))
        d = ud.normalize("NFD", ch)
        if d != ch:
            decomp.append((cp, [ord(x) for x in d]))
        raw = ud.decomposition(ch)
        if raw and not raw.startswith("<"):
            parts = [int(x, 16) for x in raw.split()]
            if len(parts) == 2 and ud.normalize("NFC", chr(parts[0]) + chr(parts[1])) == ch:
                pairs.append((parts[0], parts[1], cp))
    pairs.sort()
    seconds = sorted(set(b for _, b, _ in pairs))
    out = ["/* tok_nfc_data.c: Unicode %s tables for NFC (generated by scripts/gen_tok_golden.py"
           " nfc-tables; do not edit). */" % ud.unidata_version,
           "#include <stdint.h>", "#include <stddef.h>", ""]
    out.append("const uint32_t dsi__nfc_ccc[][2] = {")
    def rows(items, per):
        return ["    " + " ".join(items[i:i + per]) for i in range(0, len(items), per)]
    out += rows(["{0x%X, %d}," % x for x in ccc], 8)
    out.append("};\nconst size_t dsi__nfc_n_ccc = sizeof dsi__nfc_ccc / sizeof dsi__nfc_ccc[0];\n")
    flat, idx = [], []
    for cp, d in decomp:
        idx.append((cp, len(flat), len(d)))
        flat += d
    out.append("const uint32_t dsi__nfc_decomp_cp[][3] = { /* code point, offset, length */")
    out += rows(["{0x%X, %d, %d}," % x for x in idx], 6)
    out.append("};\nconst size_t dsi__nfc_n_decomp = sizeof dsi__nfc_decomp_cp / sizeof dsi__nfc_decomp_cp[0];\n")
    out.append("const uint32_t dsi__nfc_decomp_seq[] = {")
    for i in range(0, len(flat), 8):
        out.append("    " + " ".join("0x%X," % x for x in flat[i:i + 8]))
    out.append("};\n")
    out.append("const uint32_t dsi__nfc_pairs[][3] = { /* first, second, composite; sorted */")
    out += rows(["{0x%X, 0x%X, 0x%X}," % x for x in pairs], 4)
    out.append("};\nconst size_t dsi__nfc_n_pairs = sizeof dsi__nfc_pairs / sizeof dsi__nfc_pairs[0];\n")
    out.append("const uint32_t dsi__nfc_seconds[] = { /* code points that can combine with a previous one */")
    for i in range(0, len(seconds), 8):
        out.append("    " + " ".join("0x%X," % x for x in seconds[i:i + 8]))
    out.append("};\nconst size_t dsi__nfc_n_seconds = sizeof dsi__nfc_seconds / sizeof dsi__nfc_seconds[0];")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "nfc-tables":
        nfc_tables(sys.argv[2])
        return 0
    if len(sys.argv) == 3 and sys.argv[1] == "corpus":
        with open(sys.argv[2], "w", encoding="utf-8") as f:
            for i, s in enumerate(build_corpus()):
                f.write(json.dumps({"i": i, "text": s}, ensure_ascii=False) + "\n")
        return 0
    if len(sys.argv) == 5 and sys.argv[1] == "golden":
        golden(sys.argv[2], sys.argv[3], sys.argv[4])
        return 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
