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
