"""Locust load test for dsinfer, for teams that already run Locust.

    DSI_KEY=$(cat .dsinfer/dev.key) locust -f bench/locustfile.py \
        --host https://127.0.0.1:8443 --users 32 --spawn-rate 8 --run-time 60s --headless

Streams /v1/chat/completions like bench/loadgen.c (same endpoint, same request
shape) and reports time to first token as a separate entry. Set DSI_CACERT to the
server's certificate (e.g. .dsinfer/tls-cert.pem) or DSI_INSECURE=1 for a
self-signed one; DSI_MODEL names the model (default "demo").
"""
import json
import os
import random
import time

from locust import HttpUser, between, events, task

WORDS = "the light of morning river and king spoke unto people city gate bread water land".split()


class ChatUser(HttpUser):
    wait_time = between(0, 0.1)

    def on_start(self):
        self.client.headers["Authorization"] = "Bearer " + os.environ["DSI_KEY"]
        if os.environ.get("DSI_INSECURE"):
            self.client.verify = False
        elif os.environ.get("DSI_CACERT"):
            self.client.verify = os.environ["DSI_CACERT"]

    @task
    def chat(self):
        body = {
            "model": os.environ.get("DSI_MODEL", "demo"),
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": random.randint(16, 64),
            "temperature": 0,
            "messages": [{"role": "user", "content": " ".join(random.choices(WORDS, k=random.randint(8, 64)))}],
        }
        t0 = time.perf_counter()
        first = None
        with self.client.post("/v1/chat/completions", json=body, stream=True, catch_response=True,
                              name="/v1/chat/completions (stream)") as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}")
                return
            done = False
            for line in r.iter_lines():
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter()
            if not done:
                r.failure("stream ended without [DONE]")
                return
            r.success()
        if first is not None:
            events.request.fire(request_type="TTFT", name="time to first token",
                                response_time=(first - t0) * 1000, response_length=0, exception=None, context={})
