"""A small OpenAI-compatible mock server for testing the load generator.

Speaks enough of the protocol: GET /v1/models, POST /v1/completions and
/v1/chat/completions, streamed (SSE, chunked transfer encoding, keep-alive) or
not, with the final usage chunk when asked for (stream_options.include_usage).
It emits exactly max_tokens tokens, one per chunk: the first after `ttft`
seconds, the rest `itl` seconds apart (deadlines measured from the request's
arrival, so sleeping late does not accumulate).

Fault injection, counted over all generation requests (1-based):
  fail_every=N       every Nth request answers HTTP 500 with an OpenAI error body
  cut_every=N        every Nth stream is cut after half its tokens (the socket is
                     closed without the end of the chunked body)
  error_event_every=N every Nth stream sends data: {"error": ...} after half its
                     tokens, then [DONE]
  no_usage=True      never send usage (the client must count chunks)
  role_chunk=True    chat streams start with a role-only delta (as vLLM does),
                     which carries no token

Use in a test:
    srv = MockServer(ttft=0.05, itl=0.01).start()   # a thread; srv.port
    ... srv.requests (parsed bodies) ...; srv.stop()
or standalone:  python tests/lib/mock_openai.py --port 8000 --ttft 0.05 --itl 0.01
"""
import argparse
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mock-openai/1"

    def log_message(self, fmt, *args):  # keep test output clean
        pass

    # ---- helpers ---------------------------------------------------------------
    def _json(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _chunk(self, data: bytes):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _event(self, obj):
        payload = obj if isinstance(obj, str) else json.dumps(obj)
        self._chunk(b"data: " + payload.encode() + b"\n\n")

    # ---- endpoints ---------------------------------------------------------------
    def do_GET(self):
        m = self.server.mock
        if self.path.rstrip("/") == "/v1/models":
            self._json(200, {"object": "list", "data": [
                {"id": m.model, "object": "model", "owned_by": "mock", "root": m.model}]})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self):
        m = self.server.mock
        t0 = time.monotonic()
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n)
        chat = self.path.rstrip("/") == "/v1/chat/completions"
        if not chat and self.path.rstrip("/") != "/v1/completions":
            self._json(404, {"error": {"message": f"no route {self.path}"}})
            return
        try:
            req = json.loads(raw)
        except ValueError:
            self._json(400, {"error": {"message": "body is not JSON"}})
            return
        with m.lock:
            m.count += 1
            k = m.count
            m.requests.append(req)
        if m.fail_every and k % m.fail_every == 0:
            self._json(500, {"error": {"message": f"injected failure on request {k}",
                                       "type": "server_error"}})
            return
        max_tokens = int(req.get("max_tokens") or req.get("max_completion_tokens") or 16)
        if chat:
            prompt_tokens = sum(len(str(x.get("content", "")).split()) for x in req.get("messages", []))
        elif isinstance(req.get("prompt"), list):
            prompt_tokens = len(req["prompt"])
        else:
            prompt_tokens = len(str(req.get("prompt", "")).split())
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens,
                 "total_tokens": prompt_tokens + max_tokens}
        rid = f"cmpl-{k}"
        if not req.get("stream"):
            self._sleep_until(t0 + m.ttft + m.itl * max(max_tokens - 1, 0))
            text = " tok" * max_tokens
            choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                       "finish_reason": "length"} if chat else
                      {"index": 0, "text": text, "finish_reason": "length"})
            self._json(200, {"id": rid, "object": "chat.completion" if chat else "text_completion",
                             "model": m.model, "choices": [choice], "usage": usage})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        obj = "chat.completion.chunk" if chat else "text_completion"
        if chat and m.role_chunk:
            self._event({"id": rid, "object": obj, "model": m.model, "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
        cut = m.cut_every and k % m.cut_every == 0
        err = m.error_event_every and k % m.error_event_every == 0
        for i in range(max_tokens):
            self._sleep_until(t0 + m.ttft + m.itl * i)
            if (cut or err) and i == max_tokens // 2:
                if cut:
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self._event({"error": {"message": f"injected stream error on request {k}",
                                       "type": "server_error"}})
                break
            last = i == max_tokens - 1
            if chat:
                choice = {"index": 0, "delta": {"content": " tok"},
                          "finish_reason": "length" if last else None}
            else:
                choice = {"index": 0, "text": " tok", "finish_reason": "length" if last else None}
            self._event({"id": rid, "object": obj, "model": m.model, "choices": [choice]})
        so = req.get("stream_options") or {}
        if so.get("include_usage") and not m.no_usage and not err:
            self._event({"id": rid, "object": obj, "model": m.model, "choices": [], "usage": usage})
        self._event("[DONE]")
        self._chunk(b"")  # the end of the chunked body

    @staticmethod
    def _sleep_until(t):
        d = t - time.monotonic()
        if d > 0:
            time.sleep(d)


class MockServer:
    def __init__(self, host="127.0.0.1", port=0, ttft=0.0, itl=0.0, model="mock-model",
                 fail_every=0, cut_every=0, error_event_every=0, no_usage=False,
                 role_chunk=True):
        self.ttft, self.itl, self.model = ttft, itl, model
        self.fail_every, self.cut_every, self.error_event_every = fail_every, cut_every, error_event_every
        self.no_usage, self.role_chunk = no_usage, role_chunk
        self.lock = threading.Lock()
        self.count = 0
        self.requests = []
        self.httpd = ThreadingHTTPServer((host, port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.request_queue_size = 1024
        self.httpd.mock = self
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = None

    def reset(self, **kw):
        with self.lock:
            self.count = 0
            self.requests = []
            for k, v in kw.items():
                setattr(self, k, v)

    def start(self):
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--ttft", type=float, default=0.0, help="seconds to the first token")
    ap.add_argument("--itl", type=float, default=0.0, help="seconds between tokens")
    ap.add_argument("--model", default="mock-model")
    ap.add_argument("--fail-every", type=int, default=0)
    ap.add_argument("--cut-every", type=int, default=0)
    ap.add_argument("--error-event-every", type=int, default=0)
    ap.add_argument("--no-usage", action="store_true")
    a = ap.parse_args()
    srv = MockServer(a.host, a.port, a.ttft, a.itl, a.model, a.fail_every, a.cut_every,
                     a.error_event_every, a.no_usage)
    print(f"listening on {srv.url}", flush=True)
    try:
        srv.httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
