"""Structured outputs: constrained decoding on the default model, every output
checked by an independent judge.

  - the official openai client's chat.completions.parse with a pydantic model
    returns the parsed object (pydantic validates it);
  - N random JSON Schemas (nesting, enums, const, arrays with minItems and
    maxItems, optional fields, anyOf, $ref/$defs, integer bounds) sampled at
    temperature 1 with seeds: every output validates with the jsonschema
    package;
  - structured_outputs.regex outputs match Python's re.fullmatch, choice
    outputs are in the list, a GBNF grammar's outputs parse with a checker
    written here; json_object mode gives a JSON object (completions too);
  - streaming reassembles to the same text as the same request unstreamed;
  - schemas and grammars that cannot be enforced are refused with a 400 naming
    the field.
"""
import json
import os
import random
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import List, Literal, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
from harness import Checker, parse_args  # noqa: E402
from server import Server  # noqa: E402

import jsonschema  # noqa: E402
import openai  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

def extra_args(ap):
    ap.add_argument("--schemas", type=int, default=0,
                    help="random schemas (default 32; 4 under SS_SANITIZED=1)")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks of the server")


args = parse_args(extra_args)
ck = Checker("structured outputs")
SANITIZED = os.environ.get("SS_SANITIZED") == "1"
N_SCHEMAS = args.schemas or (4 if SANITIZED else 32)
if SANITIZED:
    print(f"sanitizer build (SS_SANITIZED=1): {N_SCHEMAS} random schemas instead of 32, and "
          "fewer regexes, seeds and tokens elsewhere; the release build runs all of them",
          flush=True)
else:
    print(f"{N_SCHEMAS} random schemas", flush=True)

t_start = time.time()
srv = Server(args.bin, args.model, tp=args.tp, extra=["--max-num-seqs", "32"])
print(f"server: tp {args.tp}", flush=True)
client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=300)
MODEL = json.loads(srv.get("/v1/models")[1])["data"][0]["id"]
MSG = [{"role": "user", "content": "Reply with the requested data."}]


def chat(body):
    code, raw = srv.post("/v1/chat/completions", {"messages": MSG, **body})
    try:
        return code, json.loads(raw)
    except ValueError:
        return code, None


# ---- the openai client's parse with a pydantic model -------------------------
class Pet(BaseModel):
    kind: Literal["cat", "dog", "fish"]
    name: str = Field(max_length=12)


class Person(BaseModel):
    name: str = Field(max_length=16)
    age: int = Field(ge=0, le=120)
    pets: List[Pet] = Field(max_length=2)
    nickname: Optional[str] = Field(max_length=10)


print(f"server ready at {time.time() - t_start:.1f} s", flush=True)
r = client.chat.completions.parse(model=MODEL, messages=MSG, response_format=Person,
                                  temperature=0, max_tokens=300)
msg = r.choices[0].message
ck.check(r.choices[0].finish_reason == "stop", f"parse: finish_reason {r.choices[0].finish_reason}")
ck.check(isinstance(msg.parsed, Person), f"parse: not a Person: {msg.content!r}")
if isinstance(msg.parsed, Person):
    print(f"parse: {msg.parsed!r}", flush=True)


# ---- random schemas ------------------------------------------------------------
def rand_schema(rng, depth, defs):
    kinds = ["string", "integer", "number", "boolean", "null", "enum", "const", "anyOf", "ref"]
    if depth < 2:
        kinds += ["object", "array", "object"]
    k = rng.choice(kinds)
    if k == "string":
        s = {"type": "string", "maxLength": rng.randint(0, 10)}
        if rng.random() < 0.3:
            s["minLength"] = rng.randint(0, s["maxLength"])
        return s
    if k == "integer":
        s = {"type": "integer"}
        if rng.random() < 0.5:
            lo = rng.randint(-50, 50)
            s["minimum"], s["maximum"] = lo, lo + rng.randint(0, 300)
        elif rng.random() < 0.5:
            s["minimum"] = 0
        return s
    if k == "number":
        return {"type": "number"} if rng.random() < 0.7 else {"type": "number", "minimum": 0}
    if k in ("boolean", "null"):
        return {"type": k}
    if k == "enum":
        pool = ["red", "green", "blue", "caf\u00e9", "\u00fcber", 7, 3.5, True, None, "a \"q\""]
        return {"enum": rng.sample(pool, rng.randint(1, 4))}
    if k == "const":
        return {"const": rng.choice(["fixed", 42, False, "\u65e5\u672c"])}
    if k == "anyOf":
        return {"anyOf": [rand_schema(rng, depth + 1, defs) for _ in range(rng.randint(2, 3))]}
    if k == "ref":
        name = f"D{len(defs)}"
        if len(defs) < 3 and rng.random() < 0.7:
            defs[name] = None  # reserved, so a nested ref does not take the name
            defs[name] = rand_schema(rng, depth + 1, defs)
            return {"$ref": f"#/$defs/{name}"}
        return {"type": "boolean"}
    if k == "array":
        lo = rng.randint(0, 2)
        return {"type": "array", "items": rand_schema(rng, depth + 1, defs), "minItems": lo,
                "maxItems": lo + rng.randint(0, 2)}
    names = ["id", "name", "x", "v\u00e9"]
    props = {"f%d_%s" % (i, rng.choice(names)): rand_schema(rng, depth + 1, defs)
             for i in range(rng.randint(1, 4))}
    req = [p for p in props if rng.random() < 0.6]
    s = {"type": "object", "properties": props, "required": req}
    if rng.random() < 0.5:
        s["additionalProperties"] = False
    return s


def make_schema(i):
    rng = random.Random(1000 + i)
    defs = {}
    s = rand_schema(rng, 0, defs) if rng.random() < 0.3 else {
        "type": "object", "properties": {"a": rand_schema(rng, 1, defs),
                                         "b": rand_schema(rng, 1, defs)}, "required": ["a"]}
    if defs:
        s["$defs"] = defs
    return s


def run_schema(i):
    schema = make_schema(i)
    body = {"response_format": {"type": "json_schema",
                                "json_schema": {"name": f"s{i}", "schema": schema, "strict": True}},
            "temperature": 1.0, "seed": i, "max_tokens": 500}
    code, b = chat(body)
    return i, schema, code, b


print(f"parse done at {time.time() - t_start:.1f} s", flush=True)
t0 = time.time()
n_ok = 0
with ThreadPoolExecutor(32) as pool:
    for i, schema, code, b in pool.map(run_schema, range(N_SCHEMAS)):
        if not ck.check(code == 200, f"schema {i}: {code} {b} for {json.dumps(schema)}"):
            continue
        ch = b["choices"][0]
        text = ch["message"]["content"]
        if not ck.check(ch["finish_reason"] == "stop",
                        f"schema {i}: finish_reason {ch['finish_reason']}: {text!r}"):
            continue
        try:
            jsonschema.validate(json.loads(text), schema)
            n_ok += 1
        except (ValueError, jsonschema.ValidationError) as e:
            ck.check(False, f"schema {i}: {text!r} does not validate against "
                     f"{json.dumps(schema)}: {str(e)[:300]}")
print(f"{n_ok}/{N_SCHEMAS} random-schema outputs validate ({time.time() - t0:.1f} s)", flush=True)

# ---- regex, choice, GBNF, json_object -------------------------------------------
REGEXES = [r"\d{3}-\d{4}", r"[A-Z][a-z]{2,8} (is|was) [a-z]+\.", r"(yes|no|maybe)!?",
           r"0x[0-9a-f]{4,8}", r"\w{1,10}@\w{1,8}\.(com|org)", r"[^\s,]{1,5}(, [^\s,]{1,5}){0,3}"]
print(f"schemas done at {time.time() - t_start:.1f} s", flush=True)
POOL = ThreadPoolExecutor(32)
rx_jobs = [(rx, {"structured_outputs": {"regex": rx}, "temperature": 1.0, "seed": seed,
                 "max_tokens": 60}) for rx in REGEXES[:2 if SANITIZED else None] for seed in range(1)]
for (rx, _), (code, b) in zip(rx_jobs, POOL.map(lambda j: chat(j[1]), rx_jobs)):
    if ck.check(code == 200, f"regex {rx}: {code} {b}"):
        text = b["choices"][0]["message"]["content"]
        ck.check(re.fullmatch(rx, text) is not None and b["choices"][0]["finish_reason"] == "stop",
                 f"regex {rx}: {text!r} ({b['choices'][0]['finish_reason']})")
# the older guided_regex spelling
code, b = chat({"guided_regex": r"[0-9]{2}", "temperature": 1.0, "seed": 5, "max_tokens": 10})
ck.check(code == 200 and re.fullmatch(r"[0-9]{2}", b["choices"][0]["message"]["content"] or ""),
         f"guided_regex: {code} {b}")

CHOICES = ["Paris", "London", "\u6771\u4eac", "New York City"]
for code, b in POOL.map(chat, [{"structured_outputs": {"choice": CHOICES}, "temperature": 1.0,
                               "seed": seed, "max_tokens": 20} for seed in range(2 if SANITIZED else 4)]):
    ck.check(code == 200 and b["choices"][0]["message"]["content"] in CHOICES,
             f"choice: {code} {b}")

# s-expressions: nested lists of words and numbers
GBNF = r'''
root ::= list
list ::= "(" item (" " item){0,3} ")"
item ::= atom | list
atom ::= [a-z]{1,6} | "-"? [0-9]{1,3}
'''


def parse_sexpr(s):
    """Index after one list starting at 0, or raises ValueError."""
    def lst(i, depth):
        if depth > 50 or i >= len(s) or s[i] != "(":
            raise ValueError(f"'(' expected at {i}")
        i += 1
        n = 0
        while True:
            if s[i] == "(":
                i = lst(i, depth + 1)
            else:
                m = re.match(r"[a-z]{1,6}|-?[0-9]{1,3}", s[i:])
                if not m:
                    raise ValueError(f"atom expected at {i}")
                i += m.end()
            n += 1
            if s[i] == ")":
                if n > 4:
                    raise ValueError("more than 4 items")
                return i + 1
            if s[i] != " ":
                raise ValueError(f"' ' or ')' expected at {i}")
            i += 1
    end = lst(0, 0)
    if end != len(s):
        raise ValueError("text after the list")


for code, b in POOL.map(chat, [{"structured_outputs": {"grammar": GBNF}, "temperature": 0.8,
                               "seed": seed, "max_tokens": 200} for seed in range(1 if SANITIZED else 2)]):
    if ck.check(code == 200, f"grammar: {code} {b}"):
        text = b["choices"][0]["message"]["content"]
        try:
            if b["choices"][0]["finish_reason"] != "stop":
                raise ValueError(b["choices"][0]["finish_reason"])
            parse_sexpr(text)
            ck.check(True, "")
        except (ValueError, IndexError) as e:
            ck.check(False, f"grammar output {text!r}: {e}")

print(f"regex, choice, grammar done at {time.time() - t_start:.1f} s", flush=True)
# json_object: sampled (strings are unbounded here, so some runs reach the
# limit); every run that stops is one JSON object, and some do stop
n_stop = 0
for code, b in POOL.map(chat, [{"response_format": {"type": "json_object"}, "temperature": 1.0,
                                "seed": seed, "max_tokens": 60} for seed in range(4)]):
    if ck.check(code == 200, f"json_object: {code} {b}"):
        text = b["choices"][0]["message"]["content"]
        if b["choices"][0]["finish_reason"] == "stop":
            n_stop += 1
            try:
                ck.check(isinstance(json.loads(text), dict), f"json_object: {text!r}")
            except ValueError as e:
                ck.check(False, f"json_object: {text!r}: {e}")
ck.check(n_stop > 0, "json_object: no run stopped within 60 tokens")
code, raw = srv.post("/v1/completions", {"prompt": "The cat as JSON:", "max_tokens": 40,
                                         "temperature": 1.0, "seed": 2,
                                         "structured_outputs": {"json": {
                                             "type": "object",
                                             "properties": {"age": {"type": "integer",
                                                                    "minimum": 0,
                                                                    "maximum": 30}},
                                             "required": ["age"]}}})
if ck.check(code == 200, f"completions json: {code} {raw[:300]}"):
    b = json.loads(raw)
    obj = json.loads(b["choices"][0]["text"])
    ck.check(isinstance(obj, dict) and 0 <= obj.get("age", -1) <= 30, f"completions json: {obj}")

print(f"json_object, completions done at {time.time() - t_start:.1f} s", flush=True)
# ---- streaming gives the same text -------------------------------------------------
schema = make_schema(1)
rf = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
whole = POOL.submit(chat, {"response_format": rf, "temperature": 1.0, "seed": 11, "max_tokens": 500})
stream = client.chat.completions.create(model=MODEL, messages=MSG, response_format=rf,
                                        temperature=1.0, seed=11, max_tokens=500, stream=True)
parts, reason = [], None
for chunk in stream:
    if chunk.choices:
        parts.append(chunk.choices[0].delta.content or "")
        reason = chunk.choices[0].finish_reason or reason
code, b = whole.result()
if ck.check(code == 200, f"stream reference: {code} {b}"):
    ck.check("".join(parts) == b["choices"][0]["message"]["content"] and reason == "stop",
             f"streamed {''.join(parts)!r} ({reason}) != {b['choices'][0]['message']['content']!r}")

print(f"streaming done at {time.time() - t_start:.1f} s", flush=True)

# ---- numeric bounds: sampled hot (temperature 2), every value checked by jsonschema
BOUNDS = [{"type": "integer", "minimum": -1234, "maximum": 98765},
          {"type": "integer", "exclusiveMinimum": 7, "exclusiveMaximum": 1000},
          {"type": "integer", "maximum": -40},
          {"type": "integer", "minimum": 250},
          {"type": "integer", "minimum": 10, "maximum": 10},
          {"type": "number", "minimum": 0, "maximum": 1},
          {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
          {"type": "number", "minimum": -5, "exclusiveMaximum": 5},
          {"type": "number", "exclusiveMaximum": 0},
          {"type": "array", "items": {"type": "integer", "minimum": 99, "maximum": 1001},
           "minItems": 3, "maxItems": 6}]
b_jobs = [(s, {"response_format": {"type": "json_schema", "json_schema": {"name": "b", "schema": s}},
               "temperature": 2.0, "seed": seed, "max_tokens": 40})
          for s in BOUNDS for seed in range(2 if SANITIZED else 4)]
n_vals = 0
for (s, _), (code, b) in zip(b_jobs, POOL.map(lambda j: chat(j[1]), b_jobs)):
    if not ck.check(code == 200, f"bounds {s}: {code} {b}"):
        continue
    text = b["choices"][0]["message"]["content"]
    try:
        jsonschema.validate(json.loads(text), s)
        n_vals += 1
    except (ValueError, jsonschema.ValidationError) as e:
        ck.check(False, f"bounds {s}: {text!r} ({b['choices'][0]['finish_reason']}): {str(e)[:200]}")
print(f"numeric bounds: {n_vals}/{len(b_jobs)} sampled values within their bounds", flush=True)

# ---- refused ----------------------------------------------------------------------
BAD = [
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "string", "pattern": "a+"}}}}, "response_format", "pattern"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"$ref": "#/$defs/Missing"}}}}, "response_format", "Missing"),
    ({"response_format": {"type": "xml"}}, "response_format", "xml"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "number", "minimum": 0.5}}}}, "response_format", "whole"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "integer", "minimum": 3, "maximum": 2}}}},
     "response_format", "no value"),
    ({"structured_outputs": {"regex": "(a"}}, "structured_outputs", "regex"),
    ({"structured_outputs": {"regex": "(?=a)a"}}, "structured_outputs", "look-around"),
    ({"structured_outputs": {"grammar": "root ::= root \"a\""}}, "structured_outputs", "left-recursive"),
    ({"structured_outputs": {"grammar": "root ::= nothing"}}, "structured_outputs", "nothing"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs", "non-empty"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs", "only one"),
    ({"structured_outputs": {"whitespace_pattern": " "}}, "structured_outputs", "whitespace"),
]
for (body, param, word), (code, b) in zip(BAD, POOL.map(lambda x: chat({**x[0], "max_tokens": 5}), BAD)):
    err = (b or {}).get("error", {})
    ck.check(code == 400 and err.get("param") == param and word in err.get("message", ""),
             f"{body}: {code} {b}")

ck.check(srv.stop() == 0, "server exit status")
print(f"total {time.time() - t_start:.1f} s", flush=True)
ck.finish()
