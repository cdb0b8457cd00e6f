"""The utility routes and a model without a chat template.

POST /tokenize and /detokenize (vLLM's shapes), POST /apply-template
(llama-server's), and the fields policy of the generation routes: a field that
would change the output and is not implemented is a 400 naming it.

Independent expectations:
  - a tiny GGUF written here whose vocabulary is the 256 byte tokens plus three
    control tokens and no merges, so the ids of any text are its UTF-8 bytes
    (through the GPT-2 byte alphabet) and a control token's text is its id;
    it has no tokenizer.chat_template: completions are served, chat is a 400
    naming the missing template, and --chat-template chatml serves chat;
  - the default model's own template (read by the `gguf` package) rendered by
    Python's jinja2 as transformers does, for /apply-template;
  - token_strs against the vocabulary the `gguf` package reads.
"""
import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time

import gguf
import jinja2

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
import gguf_craft as gc  # noqa: E402
from harness import Checker, parse_args  # noqa: E402
from server import Server  # noqa: E402

args = parse_args()
ck = Checker("serve utility routes")
tmp = tempfile.mkdtemp(prefix="ss-util-")
atexit.register(shutil.rmtree, tmp, ignore_errors=True)

BOS = 256  # <|endoftext|>, also EOS, in gguf_craft.tiny_llama
IM_START, IM_END = 257, 258
CONVO = [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": "Héllo, wörld! 1234"},
         {"role": "assistant", "content": "Hi."},
         {"role": "user", "content": "Again <|im_end|> as text"}]


def post_json(srv, path, body):
    code, raw = srv.post(path, body)
    try:
        import json
        return code, json.loads(raw) if raw else None
    except ValueError:
        return code, None


def err_param(body):
    return (body or {}).get("error", {}).get("param")


def err_msg(body):
    return (body or {}).get("error", {}).get("message", "")


def byte_ids(text):
    return list(text.encode("utf-8"))


def special_ids(text):
    """Ids of text with control-token text parsed as the control tokens, as a
    chat prompt is tokenized (by transformers, vLLM and llama.cpp alike: a
    message that contains "<|im_end|>" gets the control token)."""
    specials = {"<|endoftext|>": BOS, "<|im_start|>": IM_START, "<|im_end|>": IM_END}
    ids, i = [], 0
    while i < len(text):
        for s, sid in specials.items():
            if text.startswith(s, i):
                ids.append(sid)
                i += len(s)
                break
        else:
            ids += byte_ids(text[i])
            i += 1
    return ids


def chatml_ids(msgs, add_gen):
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs)
    return special_ids(text + ("<|im_start|>assistant\n" if add_gen else ""))


# ---------------------------------------------------------------------------
# A base model: no chat template

base = os.path.join(tmp, "base.gguf")
g = gc.tiny_llama(seed=3)
g.add("tokenizer.ggml.add_bos_token", gc.BOOL, False)
open(base, "wb").write(g.build())
ck.check("tokenizer.chat_template" not in gguf.GGUFReader(base).fields,
         "the crafted base model has no chat template")

srv = Server(args.bin, base)
try:
    # stderr is read by a thread of the harness: the warning, printed just
    # before the server turns ready, may reach srv.log a moment after.
    t_warn = time.time() + 10
    while not any("no chat template" in line for line in srv.log) and time.time() < t_warn:
        time.sleep(0.05)
    ck.check(any("no chat template" in line for line in srv.log),
             "serve warns at start that the model has no chat template")
    code, body = post_json(srv, "/v1/completions", {"prompt": "abc", "max_tokens": 3,
                                                      "temperature": 0})
    ck.check(code == 200 and body["usage"]["prompt_tokens"] == 3,
             f"a base model serves completions: {code} {body}")
    code, body = post_json(srv, "/v1/chat/completions",
                           {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    ck.check(code == 400 and err_param(body) == "messages" and "chat template" in err_msg(body)
             and "--chat-template" in err_msg(body),
             f"chat on a model without a template is a 400 naming it: {code} {body}")
    code, body = post_json(srv, "/apply-template", {"messages": CONVO})
    ck.check(code == 400 and "chat template" in err_msg(body),
             f"/apply-template without a template is a 400: {code} {body}")

    # /tokenize of a prompt: the bytes; add_special_tokens adds no BOS here
    # (the model says add_bos_token false).
    text = "Héllo, wörld! 1234 \u2603 <|im_end|>"
    code, body = post_json(srv, "/tokenize", {"prompt": text})
    ck.check(code == 200 and body["tokens"] == byte_ids(text) and body["count"] ==
             len(byte_ids(text)) and body["token_strs"] is None and body["max_model_len"] > 0,
             f"/tokenize prompt gives its bytes (special-token text is text): {code} {body}")
    code, body = post_json(srv, "/tokenize", {"prompt": "ab", "return_token_strs": True})
    alpha = gc.byte_alphabet()
    ck.check(code == 200 and body["token_strs"] == [alpha[ord("a")], alpha[ord("b")]],
             f"token_strs are the vocabulary's entries: {code} {body}")
    code, body = post_json(srv, "/detokenize", {"tokens": byte_ids(text)})
    ck.check(code == 200 and body == {"prompt": text}, f"/detokenize gives the text: {code} {body}")
    code, body = post_json(srv, "/detokenize", {"tokens": [IM_START] + byte_ids("x") + [IM_END]})
    ck.check(code == 200 and body == {"prompt": "<|im_start|>x<|im_end|>"},
             f"/detokenize writes control tokens as their text: {code} {body}")
    for bad, param in [({"tokens": [0, 259]}, "tokens"), ({"tokens": [-1]}, "tokens"),
                       ({"tokens": "12"}, "tokens"), ({"tokens": [1.5]}, "tokens")]:
        code, body = post_json(srv, "/detokenize", bad)
        ck.check(code == 400 and err_param(body) == param, f"/detokenize {bad}: {code} {body}")
    for bad in [{}, {"prompt": "a", "messages": CONVO}, {"prompt": 3},
                {"prompt": "a", "add_generation_prompt": True}, {"prompt": "a", "bogus": 1},
                {"prompt": "a", "model": "other"}]:
        code, body = post_json(srv, "/tokenize", bad)
        ck.check(code in (400, 404), f"/tokenize {bad} is refused: {code} {body}")
    code, _ = srv.request("GET", "/tokenize")
    ck.check(code == 405, f"GET /tokenize is 405: {code}")
    code, _ = srv.post("/tokenize", b"{not json")
    ck.check(code == 400, f"/tokenize with a body that is not JSON: {code}")
finally:
    ck.check(srv.stop() == 0, "the base-model server exits 0 on SIGTERM")

# The same model with --chat-template chatml: chat is served, and every route
# agrees on the ids.
srv = Server(args.bin, base, extra=["--chat-template", "chatml"])
try:
    for add_gen in (True, False):
        code, body = post_json(srv, "/tokenize", {"messages": CONVO,
                                                  "add_generation_prompt": add_gen})
        ck.check(code == 200 and body["tokens"] == chatml_ids(CONVO, add_gen),
                 f"/tokenize messages (add_generation_prompt {add_gen}) gives the ChatML ids: "
                 f"{code} {body}")
    code, body = post_json(srv, "/apply-template", {"messages": CONVO})
    want = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in CONVO)
    ck.check(code == 200 and body == {"prompt": want + "<|im_start|>assistant\n"},
             f"/apply-template gives the ChatML text: {code} {body}")
    code, body = post_json(srv, "/v1/chat/completions", {"messages": CONVO, "max_tokens": 2,
                                                         "temperature": 0})
    ck.check(code == 200 and body["usage"]["prompt_tokens"] == len(chatml_ids(CONVO, True)),
             f"chat's prompt is the ids /tokenize gives: {code} {body}")
finally:
    ck.check(srv.stop() == 0, "the chatml server exits 0 on SIGTERM")

# A real template from llama.cpp's corpus given as a file: a conversation with
# an assistant tool call and the tool's result renders as jinja2 renders it.
LLAMACPP = os.environ.get("SS_LLAMACPP_SRC", os.path.expanduser(
    "~/.cache/shardserve/llamacpp/llama-cpp-python-0.3.36/vendor/llama.cpp"))
qwen = os.path.join(LLAMACPP, "models", "templates", "Qwen-Qwen2.5-7B-Instruct.jinja")
if ck.check(os.path.exists(qwen), f"{qwen} is missing (bench/llamacpp.sh fetches it)"):
    TOOL_CONVO = [
        {"role": "developer", "content": "You check the weather."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in "},
                                     {"type": "text", "text": "Oslo?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 3}"},
    ]
    # What the server hands the template: developer as system, parts joined,
    # a missing content as "".
    as_template_sees = [
        {"role": "system", "content": "You check the weather."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": TOOL_CONVO[2]["tool_calls"]},
        {"role": "tool", "content": "{\"temp_c\": 3}", "tool_call_id": "call_1"},
    ]
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, loader=jinja2.BaseLoader())
    env.globals["raise_exception"] = lambda m: (_ for _ in ()).throw(
        jinja2.exceptions.TemplateError(m))
    want = env.from_string(open(qwen).read()).render(
        messages=as_template_sees, add_generation_prompt=True, bos_token="<|endoftext|>",
        eos_token="<|endoftext|>")
    srv = Server(args.bin, base, extra=["--chat-template", qwen])
    try:
        code, body = post_json(srv, "/apply-template", {"messages": TOOL_CONVO})
        ck.check(code == 200 and body["prompt"] == want,
                 f"a tool call and its result render as jinja2 renders them: {code}\n got  "
                 f"{body}\n want {want!r}")
        code, body = post_json(srv, "/apply-template", {"messages": [{"role": "tool",
                                                                      "content": 5}]})
        ck.check(code == 400 and err_param(body) == "messages",
                 f"a tool message whose content is a number: {code} {body}")
    finally:
        ck.check(srv.stop() == 0, "the file-template server exits 0")
p = subprocess.run([args.bin, "serve", "--model", base, "--port", "0", "--chat-template",
                    os.path.join(tmp, "missing.jinja")], capture_output=True, timeout=60)
ck.check(p.returncode != 0 and b"--chat-template" in p.stderr,
         f"a --chat-template file that is missing: rc {p.returncode} {p.stderr[-300:]!r}")

# ---------------------------------------------------------------------------
# The default model: its own template, rendered by jinja2; the fields policy

r = gguf.GGUFReader(args.model)
tmpl_src = str(r.fields["tokenizer.chat_template"].contents())
tokens = [str(t) for t in r.fields["tokenizer.ggml.tokens"].contents()]


def raise_exception(msg):
    raise jinja2.exceptions.TemplateError(msg)


env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True,
                         loader=jinja2.BaseLoader())
env.globals["raise_exception"] = raise_exception
jt = env.from_string(tmpl_src)
bos_id = int(r.fields["tokenizer.ggml.bos_token_id"].contents())
eos_id = int(r.fields["tokenizer.ggml.eos_token_id"].contents())

srv = Server(args.bin, args.model)
try:
    for msgs in (CONVO, CONVO[1:2], CONVO[1:]):
        want = jt.render(messages=msgs, add_generation_prompt=True, bos_token=tokens[bos_id],
                         eos_token=tokens[eos_id])
        code, body = post_json(srv, "/apply-template", {"messages": msgs})
        ck.check(code == 200 and body["prompt"] == want,
                 f"/apply-template equals jinja2's rendering of the model's template "
                 f"({len(msgs)} messages): {code}\n got  {body}\n want {want!r}")
    code, body = post_json(srv, "/tokenize", {"messages": CONVO, "return_token_strs": True})
    ok = code == 200 and body["count"] == len(body["tokens"]) == len(body["token_strs"])
    ck.check(ok and all(tokens[i] == s for i, s in zip(body["tokens"], body["token_strs"])),
             f"token_strs are the gguf vocabulary's entries: {code}")
    if ok:
        chat_ids = body["tokens"]
        code, body = post_json(srv, "/v1/chat/completions", {"messages": CONVO, "max_tokens": 1})
        ck.check(code == 200 and body["usage"]["prompt_tokens"] == len(chat_ids),
                 f"chat's prompt has as many tokens as /tokenize says: {code} {body}")
        code, body = post_json(srv, "/detokenize", {"tokens": chat_ids})
        want = jt.render(messages=CONVO, add_generation_prompt=True, bos_token=tokens[bos_id],
                         eos_token=tokens[eos_id])
        ck.check(code == 200 and body["prompt"] == want,
                 f"/detokenize of the chat ids gives the rendered text back: {code} {body}")

    # Fields that would change the output: refused with the field named;
    # their neutral values pass.
    chat = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2}
    refused = [("tools", [{"type": "function", "function": {"name": "f g"}}]),  # a bad name
               ("tool_choice", "required"), ("functions", [{"name": "f"}]),
               ("function_call", {"name": "f"}), ("n", 17), ("best_of", 2), ("echo", True)]
    for field, value in refused:
        code, body = post_json(srv, "/v1/chat/completions", {**chat, field: value})
        ck.check(code == 400 and err_param(body) == field,
                 f"chat with {field}={value} is a 400 naming it: {code} {body}")
    code, body = post_json(srv, "/v1/chat/completions", {**chat, "reasoning_effort": "high"})
    ck.check(code == 400 and "reasoning_effort" in err_msg(body),
             f"an unknown field is a 400 naming it: {code} {body}")
    code, body = post_json(srv, "/v1/completions", {"prompt": "a", "max_tokens": 1,
                                                    "suffix": "zz"})
    ck.check(code == 400 and err_param(body) == "suffix", f"suffix is refused: {code} {body}")
    # The rest of the README's "400, not implemented yet" row, on completions.
    for field, extra in (("best_of", {"best_of": 17}), ("n", {"n": 17})):
        code, body = post_json(srv, "/v1/completions", {"prompt": "a", "max_tokens": 1, **extra})
        ck.check(code == 400 and err_param(body) == field,
                 f"completions with {extra} is a 400 naming it: {code} {body}")
    neutral = {"presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {},
               "response_format": {"type": "text"}, "tools": [], "tool_choice": "none",
               "user": "u1", "metadata": {"k": "v"}, "store": False, "repetition_penalty": 1}
    code, body = post_json(srv, "/v1/chat/completions", {**chat, **neutral})
    ck.check(code == 200, f"neutral values of those fields are accepted: {code} {body}")
finally:
    ck.check(srv.stop() == 0, "the default-model server exits 0 on SIGTERM")

sys.exit(ck.finish())
