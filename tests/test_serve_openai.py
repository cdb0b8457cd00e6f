"""The server through the official `openai` Python client and through curl, at
TP = 1 and TP = 2: completions, chat, streaming with include_usage, stop
strings, seeded sampling that reproduces, logprobs, /v1/models.

Expected texts come from `shardserve generate` on the same prompt (itself
checked against the numpy reference in test_reference.py), so the server must
return exactly what the engine computes for a request alone.
"""
import json
import os
import subprocess
import sys

import openai

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
from harness import Checker, parse_args  # noqa: E402
from server import Server  # noqa: E402

args = parse_args()
ck = Checker("serve openai")
MODEL = "SmolLM2-135M-Instruct.Q4_1"


def generate(prompt, n, extra=()):
    rc, out, err = ck.run(args.bin, ["generate", "--model", args.model, "--prompt", prompt, "-n",
                                     str(n), "--temp", "0", "--json", *extra])
    return json.loads(out) if rc == 0 else None


ref = generate("The capital of France is", 16)
ref_chat = generate("Name three colours.", 24, ["--chat"])
ref_ids = generate("Once upon a time", 12, ["--ignore-eos"])


def checks(tp):
    srv = Server(args.bin, args.model, tp=tp)
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused")
        tag = f"tp {tp}"
        # /v1/models
        models = client.models.list()
        ck.check([m.id for m in models.data] == [MODEL], f"{tag}: models {models}")

        # completions, greedy: the text generate prints, usage counts right.
        r = client.completions.create(model=MODEL, prompt="The capital of France is",
                                      max_tokens=16, temperature=0)
        ck.check(r.choices[0].text == ref["text"], f"{tag}: completion {r.choices[0].text!r} != "
                 f"{ref['text']!r}")
        ck.check(r.usage.prompt_tokens == len(ref["prompt_tokens"]) and
                 r.usage.completion_tokens == 16 and r.usage.total_tokens ==
                 16 + len(ref["prompt_tokens"]), f"{tag}: usage {r.usage}")
        ck.check(r.choices[0].finish_reason == "length", f"{tag}: finish {r.choices[0].finish_reason}")
        ck.check(r.object == "text_completion" and r.model == MODEL and r.id, f"{tag}: {r}")

        # token-id prompt
        r = client.completions.create(model=MODEL, prompt=ref_ids["prompt_tokens"], max_tokens=12,
                                      temperature=0, extra_body={"ignore_eos": True})
        ck.check(r.choices[0].text == ref_ids["text"], f"{tag}: id prompt {r.choices[0].text!r}")

        # chat, greedy
        c = client.chat.completions.create(model=MODEL, messages=[
            {"role": "user", "content": "Name three colours."}], max_tokens=24, temperature=0)
        ck.check(c.choices[0].message.content == ref_chat["text"],
                 f"{tag}: chat {c.choices[0].message.content!r} != {ref_chat['text']!r}")
        ck.check(c.choices[0].message.role == "assistant", f"{tag}: role")
        ck.check(c.usage.prompt_tokens == len(ref_chat["prompt_tokens"]), f"{tag}: chat usage {c.usage}")

        # streaming chat with include_usage: chunks concatenate to the same text,
        # one chunk per token, and the last chunk carries usage.
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Name three colours."}],
            max_tokens=24, temperature=0, stream=True, stream_options={"include_usage": True})
        text, n_content, usage, finish = "", 0, None, None
        for ch in stream:
            if ch.usage:
                usage = ch.usage
            for choice in ch.choices:
                if choice.delta.content is not None:
                    text += choice.delta.content
                    n_content += 1
                if choice.finish_reason:
                    finish = choice.finish_reason
        ck.check(text == ref_chat["text"], f"{tag}: streamed chat {text!r}")
        ck.check(usage is not None and usage.completion_tokens == len(ref_chat["tokens"]) ==
                 n_content, f"{tag}: stream usage {usage}, {n_content} content chunks, "
                 f"{len(ref_chat['tokens'])} tokens")
        ck.check(finish == ref_chat["finish_reason"], f"{tag}: stream finish {finish}")

        # streaming completion
        stream = client.completions.create(model=MODEL, prompt="The capital of France is",
                                           max_tokens=16, temperature=0, stream=True)
        text = "".join(ch.choices[0].text for ch in stream if ch.choices)
        ck.check(text == ref["text"], f"{tag}: streamed completion {text!r}")

        # stop strings: the text ends before the stop string, finish_reason stop.
        full = ref["text"]
        stop = full[8:11]
        r = client.completions.create(model=MODEL, prompt="The capital of France is",
                                      max_tokens=16, temperature=0, stop=[stop, "zzzz"])
        ck.check(r.choices[0].text == full[:full.index(stop)] and
                 r.choices[0].finish_reason == "stop",
                 f"{tag}: stop {stop!r}: {r.choices[0].text!r} {r.choices[0].finish_reason}")

        # seeded sampling reproduces; another seed (very likely) differs.
        kw = dict(model=MODEL, prompt="Write a word:", max_tokens=20, temperature=1.0, top_p=1.0,
                  extra_body={"ignore_eos": True})
        a = client.completions.create(seed=1234, **kw).choices[0].text
        b = client.completions.create(seed=1234, **kw).choices[0].text
        d = client.completions.create(seed=99, **kw).choices[0].text
        ck.check(a == b, f"{tag}: same seed, different text: {a!r} vs {b!r}")
        ck.check(a != d, f"{tag}: seeds 1234 and 99 gave the same 20 tokens {a!r}")

        # logprobs (chat): top_logprobs sorted, the chosen token's logprob present.
        c = client.chat.completions.create(model=MODEL, messages=[
            {"role": "user", "content": "Hi"}], max_tokens=4, temperature=0, logprobs=True,
            top_logprobs=3)
        lp = c.choices[0].logprobs.content
        ck.check(len(lp) == c.usage.completion_tokens and all(len(t.top_logprobs) == 3 for t in lp)
                 and all(t.logprob <= 0 for t in lp) and
                 all(t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob for t in lp) and
                 all(abs(t.logprob - t.top_logprobs[0].logprob) < 1e-6 for t in lp),
                 f"{tag}: logprobs {lp}")

        # Errors come back as the client's exceptions with OpenAI's error body.
        try:
            client.completions.create(model=MODEL, prompt="x", max_tokens=-1)
            ck.check(False, f"{tag}: max_tokens -1 accepted")
        except openai.BadRequestError as e:
            ck.check(e.status_code == 400 and "max_tokens" in str(e), f"{tag}: {e}")
        try:
            client.completions.create(model="nope", prompt="x", max_tokens=1)
            ck.check(False, f"{tag}: unknown model accepted")
        except openai.NotFoundError as e:
            ck.check(e.status_code == 404, f"{tag}: {e}")

        # The same through curl.
        body = json.dumps({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 16,
                           "temperature": 0})
        p = subprocess.run(["curl", "-sS", "-H", "Content-Type: application/json", "-d", body,
                            srv.url + "/v1/completions"], capture_output=True, timeout=120)
        got = json.loads(p.stdout)
        ck.check(got["choices"][0]["text"] == ref["text"], f"{tag}: curl completion {got}")
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content":
                          "Name three colours."}], "max_tokens": 24, "temperature": 0,
                           "stream": True, "stream_options": {"include_usage": True}})
        p = subprocess.run(["curl", "-sSN", "-H", "Content-Type: application/json", "-d", body,
                            srv.url + "/v1/chat/completions"], capture_output=True, timeout=120)
        events = [l[6:] for l in p.stdout.decode().split("\n") if l.startswith("data: ")]
        ck.check(events and events[-1] == "[DONE]", f"{tag}: curl stream ends with {events[-1:]}")
        chunks = [json.loads(e) for e in events[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        ck.check(text == ref_chat["text"], f"{tag}: curl stream text {text!r}")
        ck.check(chunks[-1]["usage"]["completion_tokens"] == len(ref_chat["tokens"]),
                 f"{tag}: curl stream usage {chunks[-1]}")
        p = subprocess.run(["curl", "-sS", srv.url + "/v1/models"], capture_output=True, timeout=60)
        ck.check(json.loads(p.stdout)["data"][0]["id"] == MODEL, f"{tag}: curl models {p.stdout}")
        print(f"{tag}: done", flush=True)
    finally:
        rc = srv.stop()
        ck.check(rc == 0, f"tp {tp}: server exit status {rc} after SIGTERM:\n{''.join(srv.log[-20:])}")


if ref and ref_chat and ref_ids:
    checks(1)
    checks(2)
else:
    ck.check(False, "generate failed; cannot compute the expected texts")
ck.finish()
