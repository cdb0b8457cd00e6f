"""Tool calls on /v1/chat/completions: tools, tool_choice, parallel_tool_calls.

Deterministic output: tiny synthetic models (written with the `gguf` package)
whose greedy output is a fixed chain of tokens, so that what the model says,
a tool call in a given format, is known before the server reads it:
  * the embedding of the chain's k-th token is the unit vector e_k, every
    layer's output projection is zero (the residual stream is the embedding),
    and the output matrix maps e_k to the (k+1)-th token: a bigram chain that
    starts at the prompt's last token (the template's generation prompt);
  * the chain's tokens are added tokens of whole pieces of text, so that a call
    arrives split over several tokens, in the middle of its markers.
Checked:
  * the prompt of /apply-template with tools is jinja2's rendering of the same
    llama.cpp corpus template (Qwen2.5) with the same tools, as transformers
    passes them; a template that does not read tools gets the README's preamble;
  * the calls read from the output (Hermes <tool_call>, Llama-3 JSON, Mistral
    [TOOL_CALLS]), through the official `openai` client: ids, names, arguments
    (valid against the tool's parameters, jsonschema), content before the call,
    finish_reason; streamed deltas reassembled equal the whole response;
  * parallel_tool_calls false keeps one call; tool_choice none reads no calls;
  * a follow-up with the assistant's tool_calls and a tool message is accepted;
  * bad tools and tool_choice: 400 naming the field;
  * tool_choice required / named: valid arguments when the server accepts it
    (constrained output), otherwise a 400 naming tool_choice (printed which).
"""
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Checker, parse_args  # noqa: E402
from server import Server  # noqa: E402

import gguf  # noqa: E402
import jinja2  # noqa: E402
import jinja2.ext  # noqa: E402
import jsonschema  # noqa: E402
import numpy as np  # noqa: E402
import openai  # noqa: E402
from gguf_craft import byte_alphabet  # noqa: E402
from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: E402

args = parse_args()
ck = Checker("tools")
LLAMACPP = os.environ.get("SS_LLAMACPP_SRC", os.path.expanduser(
    "~/.cache/shardserve/llamacpp/llama-cpp-python-0.3.36/vendor/llama.cpp"))
TEMPLATES = os.path.join(LLAMACPP, "models", "templates")
if not os.path.isdir(TEMPLATES):
    ck.check(False, f"{TEMPLATES} is missing (bench/llamacpp.sh fetches it; set SS_LLAMACPP_SRC)")
    ck.finish()

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "The time in a time zone.",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}},
                       "required": ["tz"]}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "Weather and time in Paris?"}]
CALL_ID = re.compile(r"^call_[A-Za-z0-9]{24}$")
# Mistral's templates take back only ids of 9 letters or digits (they raise on
# any other), so calls read in that format get such ids.
MISTRAL_ID = re.compile(r"^[A-Za-z0-9]{9}$")
ID_RE = CALL_ID

# The calls the models below say, as the client should get them.
WEATHER = ("get_weather", {"city": "Paris", "unit": "celsius"})
TIME = ("get_time", {"tz": "Europe/Paris"})


def chain_model(path, template, specials, chain):
    """A byte-level model whose greedy output after the token chain[0] is
    chain[1:], then the EOS.  specials: [(text, gguf token type)], the first
    one the EOS; chain items are single characters (byte tokens) or specials."""
    alpha = byte_alphabet()
    # One merge (of two bytes no prompt here has): the writer leaves out an
    # empty merge list, and a BPE vocabulary needs one.
    merged = alpha[0xFE] + alpha[0xFF]
    tokens = [alpha[b] for b in range(256)] + [t for t, _ in specials] + [merged]
    types = [gguf.TokenType.NORMAL] * 256 + [k for _, k in specials] + [gguf.TokenType.NORMAL]
    ids = {t: 256 + i for i, (t, _) in enumerate(specials)}
    tid = lambda t: ids[t] if t in ids else ord(t)  # noqa: E731
    vocab, dim, ffn, eos = len(tokens), 64, 64, 256
    assert len(chain) <= dim
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tool chain test model")
    w.add_block_count(1)
    w.add_context_length(4096)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(ffn)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([alpha[0xFE] + " " + alpha[0xFF]])
    w.add_bos_token_id(eos)
    w.add_eos_token_id(eos)
    w.add_chat_template(template)
    emb = np.zeros((vocab, dim), np.float32)
    out = np.zeros((vocab, dim), np.float32)
    for k, t in enumerate(chain):
        emb[tid(t), k] = 1.0
        nxt = tid(chain[k + 1]) if k + 1 < len(chain) else eos
        out[nxt, k] = 4.0  # rmsnorm(e_k) = 8 e_k: a logit of 32 against 0
    rng = np.random.default_rng(0)
    small = lambda r, c: (rng.standard_normal((r, c)) * 0.1).astype(np.float32)  # noqa: E731
    w.add_tensor("token_embd.weight", emb)
    w.add_tensor("output_norm.weight", np.ones(dim, np.float32))
    w.add_tensor("output.weight", out)
    w.add_tensor("blk.0.attn_norm.weight", np.ones(dim, np.float32))
    w.add_tensor("blk.0.attn_q.weight", small(dim, dim))
    w.add_tensor("blk.0.attn_k.weight", small(dim, dim))
    w.add_tensor("blk.0.attn_v.weight", small(dim, dim))
    w.add_tensor("blk.0.attn_output.weight", np.zeros((dim, dim), np.float32))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(dim, np.float32))
    w.add_tensor("blk.0.ffn_gate.weight", small(ffn, dim))
    w.add_tensor("blk.0.ffn_up.weight", small(ffn, dim))
    w.add_tensor("blk.0.ffn_down.weight", np.zeros((dim, ffn), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


CTRL, USER = gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED


def make_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


def jinja_render(src, messages, tools, bos, eos):
    return make_env().from_string(src).render(messages=messages, tools=tools, documents=None,
                                              add_generation_prompt=True, bos_token=bos,
                                              eos_token=eos)


def err_param(exc):
    try:
        return exc.body.get("param") if isinstance(exc.body, dict) else None
    except AttributeError:
        return None


def calls_of(msg):
    return [(c.function.name, json.loads(c.function.arguments)) for c in (msg.tool_calls or [])]


def check_calls(label, resp, want, content):
    """The whole response: the calls, their ids, arguments valid, the content."""
    ch = resp.choices[0]
    got = calls_of(ch.message)
    ck.check(got == want, f"{label}: calls {got}, want {want}")
    ck.check(ch.finish_reason == "tool_calls", f"{label}: finish_reason {ch.finish_reason}")
    ck.check(ch.message.content == content, f"{label}: content {ch.message.content!r}, "
                                            f"want {content!r}")
    for c in ch.message.tool_calls or []:
        ck.check(ID_RE.match(c.id) is not None and c.type == "function",
                 f"{label}: call id {c.id!r} type {c.type!r}")
        try:
            jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])
        except (jsonschema.ValidationError, KeyError, ValueError) as e:
            ck.check(False, f"{label}: arguments {c.function.arguments!r} invalid: {e}")
    ids = [c.id for c in ch.message.tool_calls or []]
    ck.check(len(set(ids)) == len(ids), f"{label}: call ids repeat: {ids}")


def check_stream(label, client, req, whole):
    """Streamed: the deltas, reassembled, equal the whole response."""
    content, calls, finish, first_kinds = "", {}, None, {}
    for chunk in client.chat.completions.create(stream=True, **req):
        if not chunk.choices:
            continue
        d = chunk.choices[0].delta
        if d.content:
            content += d.content
        for tc in d.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
            if tc.index not in first_kinds:
                first_kinds[tc.index] = (tc.id, tc.type, tc.function.name if tc.function else None)
            if tc.id:
                slot["id"] = tc.id
            if tc.function and tc.function.name:
                slot["name"] = tc.function.name
            if tc.function and tc.function.arguments:
                slot["arguments"] += tc.function.arguments
        if chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    w = whole.choices[0]
    want = calls_of(w.message)
    got = [(calls[i]["name"], json.loads(calls[i]["arguments"] or "null")) for i in sorted(calls)]
    ck.check(got == want, f"{label} streamed: calls {got}, want {want}")
    ck.check(sorted(calls) == list(range(len(calls))), f"{label} streamed: indexes {sorted(calls)}")
    for i, (cid, typ, name) in first_kinds.items():
        ck.check(cid is not None and ID_RE.match(cid) and typ == "function" and name,
                 f"{label} streamed: call {i} starts with id, type and name: {cid} {typ} {name}")
    ck.check((content or None) == w.message.content,
             f"{label} streamed: content {content!r}, whole {w.message.content!r}")
    ck.check(finish == w.finish_reason, f"{label} streamed: finish {finish}, whole "
                                        f"{w.finish_reason}")


def check_choice_constrained(label, client, model, choice, names):
    """tool_choice required / named: valid arguments when the server constrains
    the output, else a 400 naming tool_choice."""
    try:
        r = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS,
                                           tool_choice=choice, max_tokens=256, temperature=0)
    except openai.BadRequestError as e:
        print(f"{label}: refused (no constrained decoding in this build): {e.message}")
        ck.check(err_param(e) == "tool_choice", f"{label}: the 400 names {err_param(e)}")
        return
    print(f"{label}: accepted (constrained decoding)")
    ch = r.choices[0]
    ck.check(ch.finish_reason == "tool_calls" and ch.message.tool_calls,
             f"{label}: no call: {ch}")
    for c in ch.message.tool_calls or []:
        ck.check(c.function.name in names, f"{label}: called {c.function.name}")
        try:
            jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])
        except (jsonschema.ValidationError, KeyError, ValueError) as e:
            ck.check(False, f"{label}: arguments {c.function.arguments!r} invalid: {e}")


def check_bad_requests(client, model):
    bad = [
        ("tools not a list", {"tools": {"type": "function"}}, "tools"),
        ("tool type", {"tools": [{"type": "retrieval", "function": TOOLS[0]["function"]}]},
         "tools"),
        ("no function", {"tools": [{"type": "function"}]}, "tools"),
        ("name with a space", {"tools": [{"type": "function", "function": {"name": "get it"}}]},
         "tools"),
        ("name too long", {"tools": [{"type": "function", "function": {"name": "x" * 65}}]},
         "tools"),
        ("parameters not an object", {"tools": [{"type": "function", "function": {
            "name": "f", "parameters": "{}"}}]}, "tools"),
        ("parameters of type string", {"tools": [{"type": "function", "function": {
            "name": "f", "parameters": {"type": "string"}}}]}, "tools"),
        ("a property's type unknown", {"tools": [{"type": "function", "function": {
            "name": "f", "parameters": {"type": "object", "properties": {
                "a": {"type": "text"}}}}}]}, "tools"),
        ("required not a list", {"tools": [{"type": "function", "function": {
            "name": "f", "parameters": {"type": "object", "required": "a"}}}]}, "tools"),
        ("two tools of one name", {"tools": [TOOLS[0], TOOLS[0]]}, "tools"),
        ("tool_choice unknown", {"tools": TOOLS, "tool_choice": "always"}, "tool_choice"),
        ("tool_choice names no tool", {"tools": TOOLS, "tool_choice": {
            "type": "function", "function": {"name": "get_news"}}}, "tool_choice"),
        ("tool_choice required without tools", {"tool_choice": "required"}, "tool_choice"),
        ("parallel_tool_calls not a boolean", {"tools": TOOLS, "parallel_tool_calls": "yes"},
         "parallel_tool_calls"),
        ("functions (deprecated)", {"functions": [TOOLS[0]["function"]]}, "functions"),
    ]
    for label, extra, param in bad:
        try:
            client.chat.completions.create(model=model, messages=ASK, max_tokens=4, **extra)
            ck.check(False, f"{label}: accepted")
        except openai.BadRequestError as e:
            ck.check(err_param(e) == param and param in e.message,
                     f"{label}: 400 names {err_param(e)}: {e.message}")
    try:
        client.completions.create(model=model, prompt="hi", max_tokens=4,
                                  extra_body={"tools": TOOLS})
        ck.check(False, "tools on /v1/completions: accepted")
    except openai.BadRequestError as e:
        ck.check(err_param(e) == "tools", f"tools on /v1/completions: 400 names {err_param(e)}")


def followup(label, client, model, first):
    """The assistant's calls and the tools' results in the next request."""
    msg = first.choices[0].message
    msgs = ASK + [{"role": "assistant", "content": msg.content,
                   "tool_calls": [c.model_dump() for c in msg.tool_calls]}]
    for c in msg.tool_calls:
        msgs.append({"role": "tool", "tool_call_id": c.id, "content": "{\"ok\": true}"})
    try:
        r = client.chat.completions.create(model=model, messages=msgs, tools=TOOLS, max_tokens=8,
                                           temperature=0)
        ck.check(r.choices[0].finish_reason is not None, f"{label}: follow-up answered")
    except openai.OpenAIError as e:
        ck.check(False, f"{label}: a follow-up with tool_calls and tool messages: {e}")


def run_model(label, path, extra, want, content, apply_ref=None):
    srv = Server(args.bin, path, extra=extra)
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        model = client.models.list().data[0].id
        if apply_ref:
            code, body = srv.post("/apply-template", {"messages": ASK, "tools": TOOLS})
            got = json.loads(body).get("prompt") if code == 200 else body
            ck.check(code == 200 and got == apply_ref,
                     f"{label}: /apply-template with tools: {code}\n got  {got!r}\n want "
                     f"{apply_ref!r}")
        req = dict(model=model, messages=ASK, tools=TOOLS, max_tokens=64, temperature=0)
        r = client.chat.completions.create(**req)
        check_calls(label, r, want, content)
        check_stream(label, client, req, r)
        if len(want) > 1:
            r1 = client.chat.completions.create(parallel_tool_calls=False, **req)
            ck.check(calls_of(r1.choices[0].message) == want[:1],
                     f"{label}: parallel_tool_calls false: {calls_of(r1.choices[0].message)}")
        rn = client.chat.completions.create(**dict(req, tool_choice="none"))
        ck.check(rn.choices[0].message.tool_calls is None and rn.choices[0].finish_reason == "stop",
                 f"{label}: tool_choice none reads no calls: {rn.choices[0]}")
        followup(label, client, model, r)
        return srv, client, model
    except Exception:
        ck.check(srv.stop() == 0, f"{label}: the server exits 0")
        raise


def stop(label, srv):
    ck.check(srv.stop() == 0, f"{label}: the server exits 0")


tmp = tempfile.mkdtemp(prefix="ss_tools_")

# Hermes / Qwen2.5: <tool_call> blocks after some text, two calls, split over
# tokens in the middle of the markers.
qwen_src = open(os.path.join(TEMPLATES, "Qwen-Qwen2.5-7B-Instruct.jinja")).read()
hermes_chain = ["\n", "Let me check.", "\n<tool", "_call>\n{\"name\": \"get_weather\", ",
                "\"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call>",
                "\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"tz\": ",
                "\"Europe/Paris\"}}\n</tool_call>"]
qwen_specials = [("<|im_end|>", CTRL), ("<|im_start|>", CTRL), ("<|endoftext|>", CTRL)] + \
    [(t, USER) for t in hermes_chain[1:]]
qwen_gguf = os.path.join(tmp, "qwen.gguf")
chain_model(qwen_gguf, qwen_src, qwen_specials, hermes_chain)
qwen_ref = jinja_render(qwen_src, ASK, TOOLS, "<|im_end|>", "<|im_end|>")
srv, client, model = run_model("hermes (Qwen2.5)", qwen_gguf, [], [WEATHER, TIME],
                               "Let me check.", qwen_ref)
try:
    check_bad_requests(client, model)
    # /tokenize with tools: the prompt the chat request gets (its usage counts it).
    code, body = srv.post("/tokenize", {"messages": ASK, "tools": TOOLS})
    r = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, max_tokens=1)
    ck.check(code == 200 and json.loads(body)["count"] == r.usage.prompt_tokens,
             f"/tokenize with tools counts the chat prompt: {code} {body[:200]} vs {r.usage}")
    code, body = srv.post("/tokenize", {"prompt": "hi", "tools": TOOLS})
    ck.check(code == 400 and json.loads(body)["error"]["param"] == "tools",
             f"/tokenize with a prompt and tools: {code} {body}")
finally:
    stop("hermes", srv)

# Text that starts like a call and is none (its JSON is cut): all of it is the
# content, whole and streamed (where it was held back, then released).
bad_chain = ["\n", "See <tool", "_call>{\"name\": \"get_weather\", \"arguments\": {\"city\"",
             " and more."]
bad_gguf = os.path.join(tmp, "badcall.gguf")
chain_model(bad_gguf, qwen_src, qwen_specials[:3] + [(t, USER) for t in bad_chain[1:]], bad_chain)
srv = Server(args.bin, bad_gguf)
try:
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
    req = dict(model=client.models.list().data[0].id, messages=ASK, tools=TOOLS, max_tokens=64,
               temperature=0)
    r = client.chat.completions.create(**req)
    text = "".join(bad_chain[1:])
    ch = r.choices[0]
    ck.check(ch.message.tool_calls is None and ch.message.content == text and
             ch.finish_reason == "stop", f"a malformed call stays content: {ch}")
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(stream=True, **req) if c.choices)
    ck.check(streamed == text, f"a malformed call streamed: {streamed!r}, want {text!r}")
finally:
    stop("malformed call", srv)

# A template that does not read tools: the README's preamble (a system
# message listing the tools as JSON, and the <tool_call> format), the same
# Hermes output read back.
plain = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
plain_path = os.path.join(tmp, "plain.jinja")
open(plain_path, "w").write(plain)
preamble = ("# Tools\n\nYou may call one or more functions to answer. The functions, as JSON:\n"
            "<tools>\n" + "".join(json.dumps(t, separators=(",", ":"), ensure_ascii=False) + "\n"
                                  for t in TOOLS) +
            "</tools>\n\nTo call a function, answer with one block per call, each exactly:\n"
            "<tool_call>\n{\"name\": <function-name>, \"arguments\": <arguments-json-object>}\n"
            "</tool_call>")
plain_ref = jinja_render(plain, [{"role": "system", "content": preamble}] + ASK, None, "", "")
srv, client, model = run_model("fallback preamble", qwen_gguf, ["--chat-template", plain_path],
                               [WEATHER, TIME], "Let me check.", plain_ref)
stop("fallback", srv)

# Llama 3.1: the whole output one JSON object with "parameters".
llama_src = open(os.path.join(TEMPLATES, "meta-llama-Llama-3.1-8B-Instruct.jinja")).read()
llama_chain = ["\n", "{\"name\": \"get_weather\", ", "\"parameters\": {\"city\": \"Paris\", ",
               "\"unit\": \"celsius\"}}"]
llama_specials = [("<|eot_id|>", CTRL), ("<|begin_of_text|>", CTRL), ("<|start_header_id|>", CTRL),
                  ("<|end_header_id|>", CTRL), ("<|python_tag|>", CTRL), ("<|eom_id|>", CTRL)] + \
    [(t, USER) for t in llama_chain[1:]]
llama_gguf = os.path.join(tmp, "llama.gguf")
chain_model(llama_gguf, llama_src, llama_specials, llama_chain)
# The model's BOS and EOS are both its first added token.
llama_ref = jinja_render(llama_src, ASK, TOOLS, "<|eot_id|>", "<|eot_id|>")
srv, client, model = run_model("llama3 JSON", llama_gguf, [], [WEATHER], None, llama_ref)
stop("llama3", srv)

# Mistral Nemo: [TOOL_CALLS] (a control token) and a JSON list of calls.
mistral_src = open(os.path.join(TEMPLATES, "mistralai-Mistral-Nemo-Instruct-2407.jinja")).read()
mistral_chain = ["[/INST]", "[TOOL_CALLS]",
                 "[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", ",
                 "\"unit\": \"celsius\"}}, {\"name\": \"get_time\", \"arguments\": "
                 "{\"tz\": \"Europe/Paris\"}}]"]
mistral_specials = [("</s>", CTRL), ("<s>", CTRL), ("[INST]", CTRL), ("[/INST]", CTRL),
                    ("[TOOL_CALLS]", CTRL), ("[AVAILABLE_TOOLS]", CTRL),
                    ("[/AVAILABLE_TOOLS]", CTRL), ("[TOOL_RESULTS]", CTRL),
                    ("[/TOOL_RESULTS]", CTRL)] + [(t, USER) for t in mistral_chain[2:]]
mistral_gguf = os.path.join(tmp, "mistral.gguf")
chain_model(mistral_gguf, mistral_src, mistral_specials, mistral_chain)
ID_RE = MISTRAL_ID
mistral_ref = jinja_render(mistral_src, ASK, TOOLS, "</s>", "</s>")
srv, client, model = run_model("mistral [TOOL_CALLS]", mistral_gguf, [], [WEATHER, TIME], None,
                               mistral_ref)
stop("mistral", srv)

# The default model: tool_choice required and named (a real model, so that a
# constrained output ends: the chain models' flat logits would fill a string
# forever), and the refusals again (release build only).
srv = Server(args.bin, args.model)
try:
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    check_choice_constrained("tool_choice required", client, model, "required",
                             {"get_weather", "get_time"})
    check_choice_constrained("tool_choice named", client, model,
                             {"type": "function", "function": {"name": "get_time"}}, {"get_time"})
    if os.environ.get("SS_SANITIZED") != "1":
        check_bad_requests(client, model)
    else:
        print("sanitizer build (SS_SANITIZED=1): the default model's repeat of the refusals "
              "skipped (the same checks ran on the synthetic model above); the release build "
              "runs them", flush=True)
finally:
    stop("default model", srv)

ck.finish()
