"""The OpenAI-compatible judge against a real HTTP server on 127.0.0.1 that speaks the
chat-completions protocol: a normal reply, a server error, a 429 with retry, a timeout and a
malformed reply. Failures are one line, nothing partial is written, the key is never written."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("openai")

from loccheck.errors import LoccheckError  # noqa: E402
from loccheck.judges import OpenAIJudge  # noqa: E402

SECRET = "sk-loccheck-test-SECRET-1234"


class Judge(BaseHTTPRequestHandler):
    """Replies "yes" to True: prompts whose answer says "true", else "no"; `mode` scripts failures."""
    mode, calls, keys = "normal", [], []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append(body)
        type(self).keys.append(self.headers.get("Authorization"))
        mode = type(self).mode
        if mode == "error":
            return self._send(500, {"error": {"message": "boom", "type": "server_error"}})
        if mode == "rate-limit" and len(type(self).calls) == 1:
            return self._send(429, {"error": {"message": "slow down", "type": "rate_limit"}}, {"Retry-After": "0"})
        if mode == "timeout":
            time.sleep(3)
        if mode == "malformed":
            return self._send(200, {"unexpected": True})
        prompt = body["messages"][-1]["content"]
        answer = prompt.split("\nA: ")[1].split("\n")[0]
        word = "yes" if ("true" in answer or prompt.endswith("Helpful:")) else "no"
        self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": f" {word.title()}."}}]})

    def _send(self, status, payload, headers=()):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in dict(headers).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    Judge.mode, Judge.calls, Judge.keys = "normal", [], []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("LOCCHECK_JUDGE_API_KEY", SECRET)
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def _judge(server, tmp_path, **kw):
    return OpenAIJudge(tmp_path / "cache", model="judge-1", base_url=server, **kw)


def test_a_normal_reply_and_the_cache(server, tmp_path):
    judge = _judge(server, tmp_path)
    verdicts = judge.judge(["it is true", "it is false"], questions=["q1?", "q2?"])
    assert verdicts.truthful == (True, False) and verdicts.informative == (True, True)
    assert len(Judge.calls) == 4 and all(c["temperature"] == 0 and c["model"] == "judge-1" for c in Judge.calls)
    assert Judge.keys[0] == f"Bearer {SECRET}"
    again = _judge(server, tmp_path).judge(["it is true", "it is false"], questions=["q1?", "q2?"])
    assert again == verdicts and len(Judge.calls) == 4            # served from the reply cache
    assert judge.identity["host"].startswith("127.0.0.1:") and "key" not in json.dumps(judge.identity)
    written = "".join(p.read_text() for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert written and SECRET not in written


def test_a_rate_limit_is_retried(server, tmp_path):
    Judge.mode = "rate-limit"
    assert _judge(server, tmp_path).judge(["true"], questions=["q?"]).truthful == (True,)
    assert len(Judge.calls) == 3                                    # 429, then both prompts


@pytest.mark.parametrize("mode, message", [
    ("error", "failed after 1 retries: InternalServerError"),
    ("timeout", "failed after 1 retries: APITimeoutError"),
    ("malformed", "malformed reply"),
])
def test_failures_are_one_line_and_leave_nothing(server, tmp_path, mode, message):
    Judge.mode = mode
    start = time.monotonic()
    with pytest.raises(LoccheckError, match=message) as err:
        _judge(server, tmp_path, timeout=1.0, retries=1).judge(["true"], questions=["q?"])
    assert "\n" not in str(err.value) and err.value.key == "generation.judge"
    assert time.monotonic() - start < 20                            # bounded in time
    assert len(Judge.calls) <= 2                                    # and in requests
    cache = tmp_path / "cache"
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file()]


@pytest.mark.slow
def test_a_failing_judge_writes_no_report_and_the_key_nowhere(server, tmp_path, known_llama):
    from loccheck.claim import parse_claim
    from loccheck.testing import claim_text
    from loccheck.verification import verify

    model_dir, pairs = known_llama
    text = claim_text(model_dir, pairs, ["L1H2"], n=19, stop="full") + (
        "metrics: [preference_margin, truth_info]\n"
        f"generation: {{max_new_tokens: 3, judge: openai, judge_model: judge-1, judge_base_url: '{server}'}}\n")
    claim = parse_claim(text, path=tmp_path / "judged.yaml")
    ok = verify(claim, out_dir=tmp_path / "ok", cache_dir=tmp_path / "cache", progress=False)
    assert 0 <= ok.payload["metric_summaries"]["optimal"]["truth_info"]["claim"]["value"] <= 1
    Judge.mode = "error"
    failing = claim.with_overrides({"generation.max_new_tokens": 2})      # new answers: the judge is asked
    with pytest.raises(LoccheckError, match="failed after"):
        verify(failing, out_dir=tmp_path / "failed", cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "failed").exists()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
