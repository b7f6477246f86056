// idle_streams.mjs: opens N streaming chat requests and keeps them open (used by
// idle_streams.sh). Args: PORT KEY N MAX_TOKENS; CA file in $CA.
import https from "node:https";
import fs from "node:fs";
const [port, key, n, maxTokens] = process.argv.slice(2);
const agent = new https.Agent({ ca: fs.readFileSync(process.env.CA), maxSockets: 100000 });
let open = 0;
for (let i = 0; i < Number(n); i++) {
  const req = https.request({ host: "127.0.0.1", port: Number(port), path: "/v1/chat/completions", method: "POST", agent,
    headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" } }, (res) => {
    open++;
    res.on("data", () => {});
    res.on("end", () => open--);
  });
  req.on("error", () => {});
  req.end(JSON.stringify({ messages: [{ role: "user", content: `stream ${i}` }], max_tokens: Number(maxTokens),
                           temperature: 0, stream: true }));
}
setInterval(() => console.log(`open ${open}`), 2000);
