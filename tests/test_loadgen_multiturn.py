"""`shardserve loadgen --dataset-name multi_turn`: sessions whose every turn
resends the conversation so far.

(a) Against a mock OpenAI server written here (it records every request body
    and the time its reply ended, and answers each request with a text of its
    own): 3 sessions x 3 turns on /v1/chat/completions and on /v1/completions.
    Turn t+1 of a session carries turn t's conversation plus the mock's reply
    and a new user message, turn 1 one user message, the user messages differ
    across sessions, and no turn arrives before its session's previous turn
    was fully answered (plus think time).  --max-concurrency 1 never overlaps
    two turns, --request-rate spaces the sessions' starts, and without usage
    the input estimates grow with the conversation.  A session whose turn 2
    gets HTTP 500 sends no turn 3 and the summary says so.
(b) Against our own server with prefix caching: every turn completes, turns
    >= 2 report cached prompt tokens and prompt lengths grow turn by turn;
    with --no-prefix-caching the hit rate is 0.
(c) Bad flags exit 2 naming the flag.
"""
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
from harness import Checker, parse_args  # noqa: E402
from server import Server  # noqa: E402

args = parse_args()
ck = Checker("loadgen multi-turn sessions")
tmp = tempfile.mkdtemp(prefix="ss-lgmt-")
SEP = "\n\n"  # between the texts of a conversation on /v1/completions


class Mock:
    """An OpenAI-compatible streaming server.  Request n (from 1, in arrival
    order) is answered with REPLY(n) in three chunks and, when asked, usage; a
    request whose user text is in `fail_texts` gets HTTP 500."""

    def __init__(self):
        self.lock = threading.Lock()
        self.log = []  # (arrival time, body, reply text or None, reply end time)
        self.fail_texts = set()
        mock = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                if self.path == "/v1/models":
                    body = json.dumps({"object": "list", "data": [{"id": "mock-model"}]}).encode()
                    code = 200
                else:
                    body, code = b"not here", 404
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                t_in = time.monotonic()
                n = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(n))
                chat = self.path == "/v1/chat/completions"
                last = body["messages"][-1]["content"] if chat else body["prompt"]
                with mock.lock:
                    idx = len(mock.log)
                    mock.log.append([t_in, body, None, None])
                if any(last.endswith(f) for f in mock.fail_texts):
                    err = json.dumps({"error": {"message": "mock failure", "code": 500}}).encode()
                    self.send_response(500)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(err)))
                    self.end_headers()
                    self.wfile.write(err)
                    with mock.lock:
                        mock.log[idx][3] = time.monotonic()
                    return
                reply = f"reply number {idx + 1} with \"quotes\" and ünïcode"
                pieces = [reply[:7], reply[7:20], reply[20:]]
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for p in pieces:
                    if chat:
                        ch = {"id": "x", "object": "chat.completion.chunk", "model": "mock-model",
                              "choices": [{"index": 0, "delta": {"content": p},
                                           "finish_reason": None}]}
                    else:
                        ch = {"id": "x", "object": "text_completion", "model": "mock-model",
                              "choices": [{"index": 0, "text": p, "finish_reason": None}]}
                    self.wfile.write(b"data: " + json.dumps(ch).encode() + b"\n\n")
                    self.wfile.flush()
                    time.sleep(0.01)
                usage = {"id": "x", "object": "chat.completion.chunk", "choices": [],
                         "usage": {"prompt_tokens": 10 + idx, "completion_tokens": 3,
                                   "total_tokens": 13 + idx}}
                if body.get("stream_options", {}).get("include_usage"):
                    self.wfile.write(b"data: " + json.dumps(usage).encode() + b"\n\n")
                with mock.lock:
                    mock.log[idx][2] = reply
                    mock.log[idx][3] = time.monotonic()
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def loadgen(url, extra, name):
    out = os.path.join(tmp, name + ".json")
    p = subprocess.run([args.bin, "loadgen", "--url", url, "--tokenizer-model", args.model,
                        "--seed", "5", "--no-progress", "--dataset-name", "multi_turn",
                        "--save-result", out] + extra,
                       capture_output=True, text=True, timeout=300)
    ck.check(p.returncode == 0, f"{name}: loadgen failed ({p.returncode}): {p.stderr[-1500:]}")
    if p.returncode != 0:
        return None, p.stdout
    return json.load(open(out)), p.stdout


def conversation(body, chat):
    """The texts a request carries, in order: user, reply, user, ..."""
    if chat:
        return [(m["role"], m["content"]) for m in body["messages"]]
    return [("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(body["prompt"].split(SEP))]


MT = ["--multi-turn-num-sessions", "3", "--multi-turn-turns", "3", "--multi-turn-user-len", "12",
      "--multi-turn-output-len", "5", "--multi-turn-think-time", "0.05"]

# ---- (a) the mock: what each turn carries -----------------------------------------
for endpoint in ("/v1/chat/completions", "/v1/completions"):
    chat = "chat" in endpoint
    tag = "chat" if chat else "completions"
    mock = Mock()
    try:
        r, text = loadgen(mock.url, MT + ["--endpoint", endpoint], "mock-" + tag)
        log = list(mock.log)
    finally:
        mock.stop()
    if r is None:
        continue
    ck.check(len(log) == 9 and r["completed"] == 9 and r["failed"] == 0,
             f"{tag}: {len(log)} requests received, completed {r['completed']}")
    # A session is the chain of requests that extend each other; rebuild the
    # chains from what the mock received, independent of what loadgen says.
    convs = [conversation(b, chat) for _, b, _, _ in log]
    firsts = [i for i, c in enumerate(convs) if len(c) == 1]
    ck.check(len(firsts) == 3, f"{tag}: {len(firsts)} requests with a single user message")
    users0 = [convs[i][0][1] for i in firsts]
    ck.check(len(set(users0)) == 3, f"{tag}: first user messages not distinct: {users0}")
    all_users = [c[-1][1] for c in convs]
    ck.check(len(set(all_users)) == 9, f"{tag}: the 9 user messages are not distinct")
    for i0 in firsts:
        chain = [i0]
        for turn in range(1, 3):
            prev = chain[-1]
            want = convs[prev] + [("assistant", log[prev][2])]
            nxt = [j for j, c in enumerate(convs) if len(c) == len(want) + 1 and c[:-1] == want]
            ck.check(len(nxt) == 1, f"{tag}: session from request {i0 + 1}: turn {turn + 1} "
                     f"matches {len(nxt)} requests (want the previous conversation + the reply "
                     f"{log[prev][2]!r} + a user message)")
            if len(nxt) != 1:
                break
            j = nxt[0]
            ck.check(convs[j][-1][0] == "user" and convs[j][-1][1] not in [t for _, t in want],
                     f"{tag}: turn {turn + 1}'s new message repeats an earlier one")
            # Sent only after the previous turn's reply ended (plus think time).
            ck.check(log[j][0] >= log[prev][3] + 0.04, f"{tag}: turn {turn + 1} arrived "
                     f"{log[j][0] - log[prev][3]:.3f} s after turn {turn}'s reply ended")
            ck.check(log[j][1]["max_tokens"] == 5, f"{tag}: max_tokens {log[j][1]['max_tokens']}")
            chain.append(j)
    # The result file: session and turn per request, consistent with the mock's view.
    ck.check(sorted(zip(r.get("sessions", []), r.get("turns", []))) ==
             sorted((s, t) for s in range(3) for t in (1, 2, 3)),
             f"{tag}: sessions/turns {r.get('sessions')} {r.get('turns')}")
    ck.check(r.get("sessions_cut_short") == 0 and r.get("turns_not_sent") == 0,
             f"{tag}: cut {r.get('sessions_cut_short')}")
    ck.check(len(r.get("p50_ttft_ms_by_turn", [])) == 3, f"{tag}: p50 by turn "
             f"{r.get('p50_ttft_ms_by_turn')}")
    for k in (1, 2, 3):
        ck.check(f"P50 TTFT turn {k} (ms):" in text, f"{tag}: summary lacks turn {k}'s p50 TTFT")

# The same seed gives the same user messages.
mock = Mock()
try:
    loadgen(mock.url, MT + ["--endpoint", "/v1/chat/completions"], "mock-again")
    again = sorted(b["messages"][-1]["content"] for _, b, _, _ in mock.log)
finally:
    mock.stop()
ck.check(again == sorted(all_users), "the same --seed gave other user messages")

# --max-concurrency 1: one turn in flight at a time, across sessions.
mock = Mock()
try:
    r1, _ = loadgen(mock.url, MT + ["--max-concurrency", "1"], "mock-c1")
    spans = sorted((t0, t1) for t0, _, _, t1 in mock.log)
finally:
    mock.stop()
ck.check(len(spans) == 9 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:])),
         f"max-concurrency 1: {len(spans)} requests, overlapping: {spans}")

# --request-rate 4 with constant gaps: the sessions start 0.25 s apart.
mock = Mock()
try:
    loadgen(mock.url, MT + ["--request-rate", "4", "--burstiness", "inf"], "mock-rate")
    starts = sorted(t0 for t0, b, _, _ in mock.log if len(conversation(b, False)) == 1)
finally:
    mock.stop()
gaps = [b - a for a, b in zip(starts, starts[1:])]
ck.check(len(starts) == 3 and all(0.2 <= g <= 0.4 for g in gaps),
         f"request rate 4: session starts {len(starts)}, gaps {gaps}")

# Without usage the input lengths are estimates for the whole conversation:
# they grow turn by turn as the conversation does.
mock = Mock()
try:
    r2, _ = loadgen(mock.url, MT + ["--no-stream-usage"], "mock-nousage")
finally:
    mock.stop()
if r2 is not None:
    est = {(s, t): n for s, t, n in zip(r2["sessions"], r2["turns"], r2["input_lens"])}
    ck.check(all(est[(s, 1)] == 12 and est[(s, 1)] < est[(s, 2)] < est[(s, 3)] for s in range(3)),
             f"no usage: input estimates {est}")

# A failed turn 2 ends its session: no turn 3, and the summary says so.  The
# user messages are seeded, so a first run tells which text turn 2 of one
# session carries.
mock = Mock()
try:
    two = [b for _, b, _, _ in log if len(conversation(b, False)) == 3]
    target = two[0]["prompt"].split(SEP)[-1]
    mock.fail_texts.add(target)
    r, text = loadgen(mock.url, MT + ["--endpoint", "/v1/completions"], "mock-fail")
    flog = list(mock.log)
finally:
    mock.stop()
if r is not None:
    ck.check(len(flog) == 8, f"fail: {len(flog)} requests received (want 9 - 1 turn not sent)")
    ck.check(sum(target in b["prompt"] for _, b, _, _ in flog) == 1,
             "fail: the failed session's turn 3 was sent")
    ck.check(r["completed"] == 7 and r["failed"] == 1, f"fail: {r['completed']}/{r['failed']}")
    ck.check(r.get("sessions_cut_short") == 1 and r.get("turns_not_sent") == 1,
             f"fail: cut {r.get('sessions_cut_short')}, unsent {r.get('turns_not_sent')}")
    ck.check("mock failure" in (r.get("first_session_error") or ""),
             f"fail: first error {r.get('first_session_error')}")
    ck.check(any(l.startswith("Sessions cut short by a failed turn:") and l.split()[-1] == "1"
                 for l in text.splitlines()), f"fail: summary:\n{text}")
    ck.check("First failed turn:" in text and "turn 2" in text and "mock failure" in text,
             f"fail: summary lacks the first error:\n{text}")

# ---- (b) our server: the prefix cache serves every later turn ----------------------
OURS = ["--multi-turn-num-sessions", "3", "--multi-turn-turns", "3", "--multi-turn-user-len", "16",
        "--multi-turn-output-len", "8", "--max-concurrency", "2"]
for caching in (True, False):
    tag = "caching" if caching else "no caching"
    srv = Server(args.bin, args.model, extra=[] if caching else ["--no-prefix-caching"])
    try:
        r, text = loadgen(srv.url, OURS, "ours" if caching else "ours-off")
    finally:
        srv.stop()
    if r is None:
        continue
    ck.check(r["completed"] == 9 and r["failed"] == 0, f"{tag}: {r['completed']}/{r['failed']}")
    ck.check("Prefix cache hit rate (%):" in text, f"{tag}: summary lacks the hit rate")
    rate = r["prefix_cache_hit_rate"]
    by = {}
    for s, t, n, c in zip(r["sessions"], r["turns"], r["input_lens"], r["cached_tokens"]):
        by[(s, t)] = (n, c)
    for s in range(3):
        lens = [by.get((s, t), (0, 0))[0] for t in (1, 2, 3)]
        ck.check(lens[0] < lens[1] < lens[2], f"{tag}: session {s} prompt tokens {lens}")
        for t in (2, 3):
            c = by.get((s, t), (0, -1))[1]
            if caching:
                ck.check(c > 0, f"{tag}: session {s} turn {t} cached {c}")
            else:
                ck.check(c == 0, f"{tag}: session {s} turn {t} cached {c}")
    if caching:
        ck.check(rate is not None and rate > 0, f"{tag}: hit rate {rate}")
    else:
        ck.check(rate == 0, f"{tag}: hit rate {rate}")

# ---- (c) bad flags ------------------------------------------------------------------
for extra, want in ((["--multi-turn-num-sessions", "0"], "--multi-turn-num-sessions"),
                    (["--multi-turn-turns", "257"], "--multi-turn-turns"),
                    (["--multi-turn-think-time", "-1"], "--multi-turn-think-time"),
                    (["--multi-turn-user-len", "0"], "--multi-turn-user-len"),
                    (["--multi-turn-output-len", "x"], "--multi-turn-output-len"),
                    (["--duration", "5"], "--duration"),
                    (["--num-prompts", "5"], "--num-prompts")):
    p = subprocess.run([args.bin, "loadgen", "--url", "http://127.0.0.1:9", "--dataset-name",
                        "multi_turn"] + extra, capture_output=True, text=True, timeout=30)
    ck.check(p.returncode == 2 and want in p.stderr, f"{extra}: rc {p.returncode}: {p.stderr}")
p = subprocess.run([args.bin, "plan", "--dataset-name", "multi_turn"], capture_output=True,
                   text=True, timeout=30)
ck.check(p.returncode == 2 and "multi_turn" in p.stderr and "cannot" in p.stderr,
         f"plan multi_turn: rc {p.returncode}: {p.stderr}")
ck.finish()
