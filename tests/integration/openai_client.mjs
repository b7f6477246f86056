// openai_client.mjs: drives a running dsinfer with the official openai npm client.
// Started by run.sh with DSI_URL, DSI_KEY, DSI_LOG (daemon log) and
// NODE_EXTRA_CA_CERTS (the daemon's self-signed certificate). Exit 0 when every
// check passes.
import OpenAI from "openai";
import { zodResponseFormat } from "openai/helpers/zod";
import fs from "node:fs";
import { z } from "zod";

const base = process.env.DSI_URL;
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: process.env.DSI_KEY, maxRetries: 0, timeout: 120000 });
const deepseek = new OpenAI({ baseURL: base, apiKey: process.env.DSI_KEY, maxRetries: 0 }); // DeepSeek's path
let fails = 0;
const check = (name, cond, extra = "") => {
  console.log(`${cond ? "ok  " : "FAIL"} openai: ${name}${cond ? "" : " " + extra}`);
  if (!cond) fails++;
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const greedy = (content, max_tokens = 12) => ({
  model: "tiny-chat", messages: [{ role: "user", content }], max_tokens, temperature: 0,
});

async function main() {
  const models = await client.models.list();
  check("models.list", models.data.map((m) => m.id).join() === "tiny-chat,deepseek-chat,deepseek-reasoner");

  const c = await client.chat.completions.create(greedy("Tell me a story"));
  check("chat.completions.create", c.object === "chat.completion" && typeof c.choices[0].message.content === "string");
  check("chat usage", c.usage.total_tokens === c.usage.prompt_tokens + c.usage.completion_tokens);
  check("chat finish_reason", ["stop", "length"].includes(c.choices[0].finish_reason));

  const ds = await deepseek.chat.completions.create(greedy("Tell me a story"));
  check("deepseek base_url gives the same answer", ds.choices[0].message.content === c.choices[0].message.content);

  const stream = await client.chat.completions.create({ ...greedy("Tell me a story"), stream: true,
                                                        stream_options: { include_usage: true } });
  let text = "", role = null, finish = null, usage = null, chunks = 0;
  for await (const ch of stream) {
    chunks++;
    if (ch.usage) usage = ch.usage;
    for (const choice of ch.choices) {
      if (choice.delta.role) role = choice.delta.role;
      text += choice.delta.content || "";
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  check("stream role", role === "assistant");
  check("stream text equals non-stream", text === c.choices[0].message.content, JSON.stringify([text, c.choices[0].message.content]));
  check("stream finish_reason", finish === c.choices[0].finish_reason);
  check("stream usage", usage && usage.completion_tokens === c.usage.completion_tokens, JSON.stringify(usage));

  const comp = await client.completions.create({ model: "tiny-chat", prompt: "Once upon a time", max_tokens: 6, temperature: 0 });
  check("completions.create", comp.object === "text_completion" && typeof comp.choices[0].text === "string");

  const lp = await client.chat.completions.create({ ...greedy("hi", 3), logprobs: true, top_logprobs: 2 });
  const lpc = lp.choices[0].logprobs && lp.choices[0].logprobs.content;
  check("logprobs", Array.isArray(lpc) && lpc.length === lp.usage.completion_tokens - (lp.choices[0].finish_reason === "stop" ? 1 : 0) &&
        lpc.every((t) => t.logprob <= 0 && t.top_logprobs.length === 2), JSON.stringify(lp.choices[0].logprobs));

  const stopped = await client.chat.completions.create({ ...greedy("Tell me a story", 30) });
  const full = stopped.choices[0].message.content;
  if (full.length >= 4) {
    const stopStr = full.slice(2, 4);
    const s2 = await client.chat.completions.create({ ...greedy("Tell me a story", 30), stop: [stopStr] });
    check("stop string cuts the text", s2.choices[0].message.content === full.slice(0, full.indexOf(stopStr)) &&
          s2.choices[0].finish_reason === "stop", JSON.stringify([stopStr, s2.choices[0].message.content]));
  }

  // Structured output (issue 22): a zod schema through chat.completions.parse.
  const Ticket = z.object({ title: z.string().max(24), priority: z.enum(["low", "medium", "high"]),
                            tags: z.array(z.string().max(8)).max(3), urgent: z.boolean() });
  const parsed = await client.chat.completions.parse({ model: "tiny-chat", max_tokens: 120,
    messages: [{ role: "user", content: "File a ticket: the printer is out of toner" }],
    response_format: zodResponseFormat(Ticket, "ticket") });
  const pm = parsed.choices[0].message;
  check("parse with zodResponseFormat gives a parsed object", pm.parsed !== null && Ticket.safeParse(pm.parsed).success &&
        parsed.choices[0].finish_reason === "stop", JSON.stringify(pm));

  // Tools with tool_choice required: calls whose arguments validate, streamed and not.
  const tools = [{ type: "function", function: { name: "get_weather", description: "Current weather",
    parameters: { type: "object", properties: { city: { type: "string", maxLength: 20 }, unit: { enum: ["C", "F"] } },
                  required: ["city", "unit"], additionalProperties: false } } }];
  const Args = z.object({ city: z.string().max(20), unit: z.enum(["C", "F"]) }).strict();
  const tc = await client.chat.completions.create({ ...greedy("Weather in Oslo?", 80), tools, tool_choice: "required" });
  const calls = tc.choices[0].message.tool_calls || [];
  check("tool_choice required returns tool_calls", tc.choices[0].finish_reason === "tool_calls" && calls.length >= 1 &&
        calls.every((c) => c.function.name === "get_weather" && Args.safeParse(JSON.parse(c.function.arguments)).success),
        JSON.stringify(tc.choices[0]));
  const ts = await client.chat.completions.create({ ...greedy("Weather in Oslo?", 80), tools, tool_choice: "required",
                                                    stream: true });
  const acc = [];
  let tfinish = null;
  for await (const ch of ts) for (const x of ch.choices) {
    for (const d of x.delta.tool_calls || []) {
      acc[d.index] = acc[d.index] || { name: "", args: "" };
      if (d.function && d.function.name) acc[d.index].name += d.function.name;
      if (d.function && d.function.arguments) acc[d.index].args += d.function.arguments;
    }
    if (x.finish_reason) tfinish = x.finish_reason;
  }
  check("tool_calls streamed as delta.tool_calls", tfinish === "tool_calls" && acc.length >= 1 &&
        acc.every((c) => c.name === "get_weather" && Args.safeParse(JSON.parse(c.args)).success), JSON.stringify(acc));

  // n choices (issue 23): one request, n indexed answers sharing the prompt; choice i
  // samples as a single request with seed + i, so each must equal that request.
  // (a prompt where the tiny model's sampled answers differ between seeds)
  const story = { model: "tiny-chat", messages: [{ role: "user", content: "Once upon a time" }], max_tokens: 10,
                  temperature: 1 };
  const one = [];
  for (let i = 0; i < 3; i++) one.push(await client.chat.completions.create({ ...story, seed: 7 + i, logprobs: true }));
  const n3 = await client.chat.completions.create({ ...story, seed: 7, n: 3, logprobs: true });
  const texts = one.map((r) => r.choices[0].message.content);
  check("n=3: three choices indexed 0..2", n3.choices.map((c) => c.index).join() === "0,1,2", JSON.stringify(n3.choices));
  check("n=3 seeded: choice i is the answer to seed + i", n3.choices.every((c, i) => c.message.content === texts[i] &&
        c.finish_reason === one[i].choices[0].finish_reason), JSON.stringify([n3.choices, texts]));
  check("n=3 seeded: the seeds differ, so do the choices", new Set(texts).size > 1, JSON.stringify(texts));
  check("n=3 logprobs: each choice has its own", n3.choices.every((c, i) =>
        JSON.stringify(c.logprobs) === JSON.stringify(one[i].choices[0].logprobs)));
  const sum = one.reduce((a, r) => a + r.usage.completion_tokens, 0);
  check("n=3 usage: the prompt once, every choice's tokens", n3.usage.prompt_tokens === one[0].usage.prompt_tokens &&
        n3.usage.completion_tokens === sum && n3.usage.total_tokens === n3.usage.prompt_tokens + sum,
        JSON.stringify([n3.usage, sum]));
  const n3s = await client.chat.completions.create({ ...story, seed: 7, n: 3, stream: true,
                                                     stream_options: { include_usage: true } });
  const st = [0, 1, 2].map(() => ({ text: "", roles: 0, finishes: [] }));
  let nusage = null;
  for await (const ch of n3s) {
    if (ch.usage) nusage = ch.usage;
    for (const x of ch.choices) {
      if (x.delta.role) st[x.index].roles++;
      st[x.index].text += x.delta.content || "";
      if (x.finish_reason) st[x.index].finishes.push(x.finish_reason);
    }
  }
  check("n=3 stream: chunks by index rebuild the non-streamed choices", st.every((c, i) => c.roles === 1 &&
        c.text === texts[i] && c.finishes.length === 1), JSON.stringify(st));
  check("n=3 stream: one usage chunk with the same usage", nusage && nusage.completion_tokens === sum &&
        nusage.prompt_tokens === n3.usage.prompt_tokens, JSON.stringify(nusage));
  const g2 = await client.chat.completions.create({ ...greedy("Tell me a story", 10), n: 2 });
  check("n=2 greedy: identical choices", g2.choices.length === 2 &&
        g2.choices[0].message.content === g2.choices[1].message.content, JSON.stringify(g2.choices));
  const cmp = await client.completions.create({ model: "tiny-chat", prompt: "Once upon a time", max_tokens: 6,
                                                temperature: 1, seed: 3, n: 2 });
  const cmp1 = await client.completions.create({ model: "tiny-chat", prompt: "Once upon a time", max_tokens: 6,
                                                 temperature: 1, seed: 4 });
  check("completions n=2: choice 1 is seed + 1's text", cmp.choices.map((c) => c.index).join() === "0,1" &&
        cmp.choices[1].text === cmp1.choices[0].text, JSON.stringify([cmp.choices, cmp1.choices]));
  const at = texts[1].slice(2).search(/[A-Za-z]{2}/);
  if (at >= 0) { // a stop string applies to each choice on its own
    const stopStr = texts[1].slice(2 + at, 4 + at);
    const ns = await client.chat.completions.create({ ...story, seed: 7, n: 3, stop: [stopStr] });
    const cut = (t) => (t.includes(stopStr) ? t.slice(0, t.indexOf(stopStr)) : t);
    check("n=3 with stop: each choice cut at its own match", ns.choices.every((c, i) => c.message.content === cut(texts[i])),
          JSON.stringify([stopStr, ns.choices.map((c) => c.message.content)]));
  }
  const pn = await client.chat.completions.parse({ model: "tiny-chat", max_tokens: 120, temperature: 1, seed: 5, n: 2,
    messages: [{ role: "user", content: "File a ticket: the printer is out of toner" }],
    response_format: zodResponseFormat(Ticket, "ticket") });
  check("n=2 parse: each choice is its own valid object", pn.choices.length === 2 &&
        pn.choices.every((c) => c.message.parsed !== null && Ticket.safeParse(c.message.parsed).success),
        JSON.stringify(pn.choices.map((c) => c.message)));
  const tn = await client.chat.completions.create({ ...greedy("Weather in Oslo?", 80), temperature: 1, seed: 9, n: 2,
                                                    tools, tool_choice: "required" });
  const ids = tn.choices.flatMap((c) => (c.message.tool_calls || []).map((t) => t.id));
  check("n=2 tool_choice required: every choice's calls parse, ids unique", tn.choices.length === 2 &&
        tn.choices.every((c) => c.finish_reason === "tool_calls" && c.message.tool_calls.length >= 1 &&
          c.message.tool_calls.every((t) => Args.safeParse(JSON.parse(t.function.arguments)).success)) &&
        new Set(ids).size === ids.length, JSON.stringify(tn.choices));
  const tns = await client.chat.completions.create({ ...greedy("Weather in Oslo?", 80), temperature: 1, seed: 9, n: 2,
                                                     tools, tool_choice: "required", stream: true });
  const tacc = [[], []], tfin = [null, null];
  for await (const ch of tns) for (const x of ch.choices) {
    for (const d of x.delta.tool_calls || []) {
      const a = (tacc[x.index][d.index] = tacc[x.index][d.index] || { name: "", args: "" });
      if (d.function && d.function.name) a.name += d.function.name;
      if (d.function && d.function.arguments) a.args += d.function.arguments;
    }
    if (x.finish_reason) tfin[x.index] = x.finish_reason;
  }
  check("n=2 streamed tool calls: per choice, the non-streamed calls", tfin.every((f) => f === "tool_calls") &&
        tacc.every((calls, i) => calls.length === tn.choices[i].message.tool_calls.length &&
          calls.every((c, k) => c.name === "get_weather" &&
            c.args === tn.choices[i].message.tool_calls[k].function.arguments)), JSON.stringify(tacc));

  // Errors map to the SDK's classes.
  const expectErr = async (name, p, status) => {
    try { await p; check(name, false, "no error"); }
    catch (e) { check(name, e.status === status, `${e.status} ${e.message}`); }
  };
  await expectErr("unknown model -> 404", client.chat.completions.create({ ...greedy("x"), model: "nope" }), 404);
  await expectErr("temperature 5 -> 400", client.chat.completions.create({ ...greedy("x"), temperature: 5 }), 400);
  await expectErr("bad key -> 401", new OpenAI({ baseURL: `${base}/v1`, apiKey: "dsi-bad", maxRetries: 0 }).models.list(), 401);

  // 32 concurrent clients, each must get its single-client answer (greedy).
  const prompts = Array.from({ length: 32 }, (_, i) => `Client number ${i} says ${"abc".repeat(i % 5)}`);
  const single = [];
  for (const p of prompts) single.push((await client.chat.completions.create(greedy(p, 6))).choices[0].message.content);
  const together = await Promise.all(prompts.map((p, i) =>
    i % 2 ? client.chat.completions.create(greedy(p, 6)).then((r) => r.choices[0].message.content)
          : client.chat.completions.create({ ...greedy(p, 6), stream: true }).then(async (s) => {
              let t = ""; for await (const ch of s) for (const x of ch.choices) t += x.delta.content || ""; return t; })));
  const bad = together.map((t, i) => (t === single[i] ? -1 : i)).filter((i) => i >= 0);
  check("32 concurrent clients get their single-client answers", bad.length === 0, `differs: ${bad}`);

  // A client that disconnects mid-stream cancels its sequence.
  const logBefore = fs.readFileSync(process.env.DSI_LOG, "utf8").split("client gone").length;
  const ac = new AbortController();
  // ignore_eos (vLLM's extension) keeps the stream going however early the model would stop.
  const long = await client.chat.completions.create({ ...greedy("Tell me a very long story", 1500), stream: true,
                                                      ignore_eos: true },
                                                    { signal: ac.signal });
  let got = 0;
  try {
    for await (const ch of long) { if (ch.choices.length && ch.choices[0].delta.content) { if (++got >= 2) ac.abort(); } }
  } catch (e) { /* aborted */ }
  let cancelled = false;
  for (let i = 0; i < 100 && !cancelled; i++) {
    cancelled = fs.readFileSync(process.env.DSI_LOG, "utf8").split("client gone").length > logBefore;
    if (!cancelled) await sleep(100);
  }
  check("disconnect cancels the request", cancelled);
}

main().then(() => process.exit(fails ? 1 : 0), (e) => { console.error("openai suite crashed:", e); process.exit(1); });
