"""Chat templates: our Jinja interpreter against Python's jinja2, configured
as Hugging Face transformers configures it (ImmutableSandboxedEnvironment,
trim_blocks, lstrip_blocks, loop controls, a {% generation %} tag that
renders its body, tojson as json.dumps without HTML escaping,
raise_exception, strftime_now), byte for byte.

Every template shipped in llama.cpp's models/templates is rendered over
several conversations.  Where jinja2 raises, ours must fail too.  A template
our interpreter rejects as unsupported is counted; the test fails when that
count exceeds the allow-list below.  Then unit cases of our own, and limits
that bound hostile templates.
"""
import datetime
import glob
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "lib"))
from harness import Checker, parse_args  # noqa: E402

import jinja2  # noqa: E402
from jinja2.ext import Extension  # noqa: E402
from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: E402

NOW = "2024-07-26"
BOS, EOS = "<s>", "</s>"
# template file name -> why our interpreter may reject it (aim: empty)
ALLOWED_UNSUPPORTED = {}


class Generation(Extension):
    """{% generation %}...{% endgeneration %}: the body, as is."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def make_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.datetime.strptime(NOW, "%Y-%m-%d").strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


ENV = make_env()


_COMPILED = {}


def reference(src, data, add_gen):
    """jinja2's rendering, or None where it raises."""
    try:
        if src not in _COMPILED:
            try:
                _COMPILED[src] = ENV.from_string(src)
            except Exception as e:  # noqa: BLE001
                _COMPILED[src] = e
        t = _COMPILED[src]
        if isinstance(t, Exception):
            return None
        kw = {k: v for k, v in data.items() if k not in ("messages", "tools")}
        return t.render(messages=data["messages"], tools=data.get("tools"), documents=None,
                        add_generation_prompt=add_gen, bos_token=BOS, eos_token=EOS, **kw)
    except Exception:  # noqa: BLE001 - any failure of jinja2 counts as "raises"
        return None


def ours(ck, binary, path, data, add_gen):
    args = ["template", "--template", path, "--bos", BOS, "--eos", EOS]
    if not add_gen:
        args.append("--no-generation-prompt")
    env = dict(os.environ, SS_TEMPLATE_NOW=NOW)
    rc, out, err = ck.run(binary, args, stdin=json.dumps(data).encode(), timeout=30, env=env)
    if rc == 0:
        return out.decode("utf-8"), None
    return None, err.strip()


TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}}}]

CONVERSATIONS = [
    ("system+user", {"messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name three colours. Ünïcødé ✓"}]}, [True, False]),
    ("multi-turn", {"messages": [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi, how can I help?"},
        {"role": "user", "content": "Tell me a joke."}]}, [True, False]),
    ("prefill", {"messages": [
        {"role": "user", "content": "Write a haiku."},
        {"role": "assistant", "content": "Autumn moonlight"}]}, [False]),
    ("tools", {"tools": TOOLS, "messages": [
        {"role": "system", "content": "Use tools when useful."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather",
         "content": "{\"temperature\": 21}"},
        {"role": "user", "content": "Thanks"}]}, [True, False]),
]


def first_diff(a, b):
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    return f"at byte {i}: ours {a[max(0, i - 30):i + 40]!r} vs jinja2 {b[max(0, i - 30):i + 40]!r}"


def check_templates(ck, binary, tdir):
    paths = sorted(glob.glob(os.path.join(tdir, "*.jinja")))
    ck.check(len(paths) >= 60, f"{tdir}: expected the llama.cpp templates, found {len(paths)}")
    identical, unsupported, rows = 0, {}, []
    for path in paths:
        name = os.path.basename(path)
        src = open(path, encoding="utf-8").read()
        problem = None
        for conv, data, gens in CONVERSATIONS:
            for add_gen in gens:
                ref = reference(src, data, add_gen)
                got, err = ours(ck, binary, path, data, add_gen)
                case = f"{conv}{'' if add_gen else ', no generation prompt'}"
                if ref is None and got is None:
                    continue
                if ref is not None and got is None and "unsupported construct" in (err or ""):
                    problem = problem or f"unsupported: {err} ({case})"
                    unsupported[name] = err
                elif ref is None:
                    problem = problem or f"jinja2 raises but ours rendered ({case})"
                elif got is None:
                    problem = problem or f"ours failed: {err} ({case})"
                elif got != ref:
                    problem = problem or f"differs ({case}) {first_diff(got, ref)}"
        if problem is None:
            identical += 1
        else:
            rows.append((name, problem))
            if name not in unsupported:
                ck.check(False, f"{name}: {problem}")
    print(f"\n{identical}/{len(paths)} templates render identically to jinja2 in every conversation")
    for name, why in rows:
        print(f"  {name:55s} {why[:300]}")
    extra = sorted(set(unsupported) - set(ALLOWED_UNSUPPORTED))
    ck.check(not extra, f"{len(extra)} templates rejected as unsupported outside the allow-list: {extra}")


# (template, variables) rendered by both; results must agree (both may fail).
UNIT_CASES = [
    ("a {{- ' b ' -}} c", {}),
    ("  {% if true %}\n  x\n  {% endif %}\ny", {}),
    ("{%+ if true %}kept{% endif %}\n{% if true +%}\nz{% endif %}", {}),
    ("{# c #}\n  {#- c2 -#}  v", {}),
    ("{% for x in xs %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}"
     "{{ loop.length }}{{ loop.revindex }}{{ loop.revindex0 }}|{% endfor %}", {"xs": "abc"}),
    ("{% for x in xs if x > 1 %}{{ x }}{{ loop.length }}{% else %}none{% endfor %}", {"xs": [1, 2, 3]}),
    ("{% for x in xs %}{% else %}empty{% endfor %}", {"xs": []}),
    ("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", {"d": {"b": 1, "a": [1, "x"]}}),
    ("{% for x in xs %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}"
     "{{ x }}{% endfor %}", {"xs": [1, 2, 3, 4, 5]}),
    ("{% for x in xs %}{{ loop.previtem }}-{{ loop.nextitem }},{% endfor %}", {"xs": [1, 2, 3]}),
    ("{% set ns = namespace(n=0) %}{% for x in xs %}{% set ns.n = ns.n + x %}{% endfor %}{{ ns.n }}",
     {"xs": [1, 2, 3]}),
    ("{% for x in [1] %}{% set y = 5 %}{% endfor %}{{ y }}", {}),
    ("{% set t %}A {{ 1 + 2 }}{% endset %}[{{ t }}]", {}),
    ("{% set t | upper %}abc{% endset %}{{ t }}", {}),
    ("{% macro m(a, b='B') %}<{{ a }}{{ b }}>{% endmacro %}{{ m(1) }}{{ m(1, b=2) }}{{ m(b=3, a=4) }}", {}),
    ("{% macro w() %}[{{ caller() }}]{% endmacro %}{% call w() %}in{% endcall %}", {}),
    ("{% filter upper %}abc {{ x }}{% endfilter %}", {"x": "y"}),
    ("{{ x is defined }}{{ y is defined }}{{ n is none }}{{ s is string }}{{ d is mapping }}"
     "{{ l is iterable }}{{ l is sequence }}{{ 1 is number }}{{ true is true }}{{ 0 is false }}",
     {"x": 1, "n": None, "s": "a", "d": {}, "l": []}),
    ("{{ 'a' in 'cat' }}{{ 2 not in [1] }}{{ 'k' in d }}{{ 1 < 2 < 3 }}{{ not 0 and 1 or 2 }}", {"d": {"k": 1}}),
    ("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1 + 2.5 }}"
     " {{ 'ab' * 3 }} {{ 'x' ~ 1 ~ none }} {{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1.5e-7 }} {{ 3.0 }}", {}),
    ("{{ 'y' if x else 'n' }}{{ 'z' if not x }}|", {"x": 0}),
    ("{{ s[1:] }}|{{ s[::-1] }}|{{ s[-2:] }}|{{ l[1:3] }}|{{ l[::2] }}|{{ s[0] }}{{ l[-1] }}",
     {"s": "héllo", "l": [1, 2, 3, 4]}),
    ("{{ d.a.b }}{{ d['a']['b'] }}{{ d.get('z', 'dflt') }}{{ d.keys() | list }}{{ d.values() | list }}",
     {"d": {"a": {"b": 5}}}),
    ("{{ [1, 'a', none, true, 1.5, {'k': (1, 2)}] }} {{ {'a': 1} }} {{ (1,) }}", {}),
    ("{{ '  x  ' | trim }}|{{ 'ab' | upper }}{{ 'AB' | lower }}|{{ 'hello world-x' | title }}|"
     "{{ 'hELLO' | capitalize }}|{{ 'aXbX' | replace('X', '-') }}|{{ [1, 2] | join(', ') }}|"
     "{{ xs | first }}{{ xs | last }}{{ xs | length }}{{ 'héllo' | length }}{{ xs | count }}", {"xs": [3, 4]}),
    ("{{ x | default('d') }}{{ '' | default('e', true) }}{{ none | d('n') }}{{ [3, 1, 2] | sort | list }}"
     "{{ ['b', 'A', 'a'] | unique | list }}{{ 'abc' | list }}{{ 5 | string }}{{ '42' | int + 1 }}"
     "{{ '2.5' | float }}{{ 'x' | int }}", {}),
    ("{{ ms | map(attribute='r') | join(',') }}|{{ ms | selectattr('r', 'equalto', 'u') | list | length }}|"
     "{{ ms | rejectattr('r', 'equalto', 'u') | map(attribute='r') | list }}|"
     "{{ [1, none, 2] | select | list }}{{ [1, 2, 3] | reject('odd') | list }}{{ ms | selectattr('x') | list }}",
     {"ms": [{"r": "u"}, {"r": "a", "x": 1}, {"r": "u"}]}),
    ("{{ d | tojson }}|{{ d | tojson(indent=2) }}|{{ 'é\"\\n' | tojson }}|{{ 'é😀' | tojson(ensure_ascii=True) }}"
     "|{{ d | tojson(sort_keys=true) }}|{{ [1.0, 2, none, false] | tojson }}",
     {"d": {"b": [1, {"c": "ü"}], "a": 2.5, "e": {}}}),
    ("{{ d | items | list }}{{ d | dictsort }}{{ 'a b  c' | wordcount }}{{ '<&>' | e }}{{ x | safe }}",
     {"d": {"b": 1, "a": 2}, "x": "<b>"}),
    ("{{ 'l1\\nl2\\n\\nl3' | indent(2) }}|{{ 'l1\\nl2' | indent(4, first=true) }}|{{ 'a\\n\\nb' | indent(2, blank=true) }}", {}),
    ("{{ s.startswith('ab') }}{{ s.endswith(('x', 'cd')) }}{{ '  p '.strip() }}{{ 'xxpxx'.lstrip('x') }}"
     "{{ 'xpx '.rstrip() }}{{ 'a,b,,c'.split(',') }}{{ ' a  b '.split() }}{{ 'a-b-c'.split('-', 1) }}"
     "{{ 'ab'.upper() }}{{ 'hello there'.title() }}{{ 'aa'.replace('a', 'b', 1) }}{{ '{}-{}'.format(1, 'x') }}"
     "{{ 'a-b-c'.rsplit('-', 1) }}", {"s": "abcd"}),
    ("{{ m.content }}|{{ m.missing }}|{{ m.missing is defined }}|{{ u }}|{{ u | length }}|{{ u ~ 'x' }}", {"m": {"content": "c"}}),
    ("{{ u.attr }}", {}),
    ("{{ u + 1 }}", {}),
    ("{{ raise_exception('bad input') }}", {}),
    ("{{ strftime_now('%d %b %Y') }}", {}),
    ("{{ range(3) | list }}{{ range(1, 7, 2) | list }}{{ dict(a=1) }}", {}),
    ("{% set a, b = [1, 2] %}{{ b }}{{ a }}", {}),
    ("{% if x %}a{% elif y %}b{% else %}c{% endif %}", {"x": 0, "y": 1}),
    ("{{ xs.append(1) }}", {"xs": []}),
    ("{{ 1 / 0 }}", {}),
    ("{{ 'a' < 1 }}", {}),
    ("{% for x in 5 %}{% endfor %}", {}),
    ("{{ x | nosuchfilter }}", {}),
    ("{% if %}", {}),
    ("{{ 'unterminated }}", {}),
    ("{% for x in xs %}", {"xs": []}),
    ("trailing newline kept once\n\n", {}),
    ("crlf\r\nline{% if true %}\r\nx{% endif %}", {}),
]


def check_units(ck, binary, tmp):
    for i, (src, data) in enumerate(UNIT_CASES):
        path = os.path.join(tmp, f"unit_{i}.jinja")
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(src)
        payload = dict(data, messages=[])
        ref = reference(src, payload, True)
        got, err = ours(ck, binary, path, payload, True)
        ck.check(ref == got, f"unit {i} {src!r}: ours {got!r} (error {err!r}) vs jinja2 {ref!r}")
    # Errors name the line and column of the construct.
    path = os.path.join(tmp, "err.jinja")
    with open(path, "w") as f:
        f.write("line one\n{{ x }}\n  {% do x.append(1) %}\n")
    got, err = ours(ck, binary, path, {"messages": []}, True)
    ck.check(got is None and "line 3, column 6" in (err or "") and "unsupported construct: tag 'do'" in err,
             f"unsupported tag error names line 3, column 6: {err!r}")
    with open(path, "w") as f:
        f.write("a\n\n{{ raise_exception('no system message allowed') }}")
    got, err = ours(ck, binary, path, {"messages": []}, True)
    ck.check(got is None and "line 3" in (err or "") and "no system message allowed" in err,
             f"raise_exception carries its message and line: {err!r}")


def check_limits(ck, binary, tmp):
    """Hostile templates end with a clear error, quickly, never a crash."""
    cases = [
        ("deep nesting", "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "nested deeper"),
        ("deep blocks", "{% if true %}" * 3000 + "x" + "{% endif %}" * 3000, "nested deeper"),
        ("huge loop", "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
         ("loop iterations", "bytes of memory")),
        ("macro recursion", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "deeper than"),
        ("output size", "{% set s = 'x' * 1000000 %}{% for i in range(100) %}{{ s }}{% endfor %}",
         "exceeds"),
        ("string doubling", "{% set ns = namespace(s='xx') %}{% for i in range(64) %}"
         "{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "bytes of memory"),
        ("big repeat", "{{ 'x' * 10000000000 }}", "exceeds"),
    ]
    for name, src, want in cases:
        path = os.path.join(tmp, "limit.jinja")
        with open(path, "w") as f:
            f.write(src)
        got, err = ours(ck, binary, path, {"messages": []}, True)
        wants = want if isinstance(want, tuple) else (want,)
        ck.check(got is None and any(w in (err or "") for w in wants), f"limit '{name}': expected an error with {want!r}, "
                 f"got output {None if got is None else len(got)} bytes, error {err!r}")
    # A hostile message: deeply nested JSON content.
    deep = '{"messages": [{"role": "user", "content": "x"}], "payload": ' + "[" * 1000 + "]" * 1000 + "}"
    path = os.path.join(tmp, "limit.jinja")
    with open(path, "w") as f:
        f.write("{{ messages[0].content }}")
    rc, out, err = ck.run(binary, ["template", "--template", path], stdin=deep.encode(), timeout=30)
    got = out if rc == 0 else None
    ck.check(got is None and "nested deeper" in (err or ""), f"deep JSON input: {err!r}")


def check_models(ck, binary, model):
    """The model's own template, BOS/EOS from its tokenizer, and none at all."""
    data = {"messages": [{"role": "user", "content": "hi"}]}
    rc, out, err = ck.run(binary, ["template", "--model", model], stdin=json.dumps(data).encode())
    ck.check(rc == 0 and out.decode().endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"),
             f"--model renders its chat template: rc {rc}, {out[-200:]!r} {err}")
    rc, out, err = ck.run(binary, ["template", "--model", model, "--chat-template", "llama3",
                                   "--no-generation-prompt"], stdin=json.dumps(data).encode())
    ck.check(rc == 0 and out == b"<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
             f"--chat-template llama3: {out!r} {err}")
    rc, out, err = ck.run(binary, ["template", "--model", model, "--chat-template", "/nonexistent.jinja"],
                          stdin=json.dumps(data).encode())
    ck.check(rc == 1 and "neither a built-in" in err, f"unreadable template file: rc {rc} {err}")


def check_hf_folder(ck, binary, tmp):
    """tokenizer_config.json's list form ("default"), and chat_template.jinja first."""
    d = os.path.join(tmp, "hf")
    os.makedirs(d, exist_ok=True)
    tok = {"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "<s>": 2, "</s>": 3},
                                       "merges": []},
           "added_tokens": [{"id": 2, "content": "<s>", "special": True},
                            {"id": 3, "content": "</s>", "special": True}],
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                             "use_regex": True},
           "normalizer": None, "decoder": {"type": "ByteLevel"}}
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        json.dump(tok, f)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "chat_template": [
            {"name": "default", "template": "D{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"},
            {"name": "tool_use", "template": "T"}]}, f)
    jt = os.path.join(d, "chat_template.jinja")
    if os.path.exists(jt):
        os.remove(jt)
    data = json.dumps({"messages": [{"role": "user", "content": "a"}]}).encode()
    rc, out, err = ck.run(binary, ["template", "--model", d], stdin=data)
    ck.check(rc == 0 and out == b"D<s>a</s>", f"list-form chat_template picks 'default': {out!r} {err}")
    with open(jt, "w") as f:
        f.write("F{{ messages | length }}\n")
    rc, out, err = ck.run(binary, ["template", "--model", d], stdin=data)
    ck.check(rc == 0 and out == b"F1", f"chat_template.jinja takes precedence: {out!r} {err}")


def main():
    args = parse_args()
    ck = Checker("chat_templates")
    src = os.environ.get("SS_LLAMACPP_SRC", os.path.expanduser(
        "~/.cache/shardserve/llamacpp/llama-cpp-python-0.3.36/vendor/llama.cpp"))
    tdir = os.path.join(src, "models", "templates")
    if not os.path.isdir(tdir):
        ck.check(False, f"{tdir} is missing (bench/llamacpp.sh fetches it; set SS_LLAMACPP_SRC)")
        ck.finish()
    tmp = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"ss_chat_templates_{os.getpid()}")
    os.makedirs(tmp, exist_ok=True)
    check_units(ck, args.bin, tmp)
    check_limits(ck, args.bin, tmp)
    check_hf_folder(ck, args.bin, tmp)
    if args.model and os.path.exists(args.model):
        check_models(ck, args.bin, args.model)
    check_templates(ck, args.bin, tdir)
    ck.finish()


if __name__ == "__main__":
    main()
