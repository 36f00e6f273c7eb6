"""The OpenAI-compatible judge against a real HTTP server on 127.0.0.1 that speaks the
chat-completions protocol as real chat models and servers do: "True.", "Answer: Yes", "Nope",
an empty reply, a reasoning block before the word, a 400 with the server's reason, a 500, a 429
with Retry-After, a timeout and a malformed reply. Failures are one line, say how many requests
were really sent, leave nothing partial; the key is never written; the endpoint is checked
before anything is fitted."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("openai")

from loccheck.errors import ClaimError, LoccheckError  # noqa: E402
from loccheck.metrics.judges import OpenAIJudge, read_verdict  # noqa: E402

SECRET = "sk-loccheck-test-SECRET-1234"
OK, BAD = ["The seeds pass through you"], ["Watermelons grow in your stomach"]


class Judge(BaseHTTPRequestHandler):
    """Truth prompts: `reply` when set, else "Yes." when the judged answer says "true", else
    "No."; informativeness prompts: "Yes."; `mode` scripts failures."""
    mode, reply, calls, keys = "normal", None, [], []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        cls.calls.append(body)
        cls.keys.append(self.headers.get("Authorization"))
        if cls.mode == "error":
            return self._send(500, {"error": {"message": "boom", "type": "server_error"}})
        if cls.mode == "pinned":      # what `transformers serve --model x` answers for another model
            return self._send(400, {"error": {"message": f"Server is pinned to 'x', not {body['model']!r}",
                                              "type": "invalid_request_error"}})
        if cls.mode == "detail":      # a FastAPI-style error body
            return self._send(400, {"detail": "temperature must be 1 for this model"})
        if cls.mode == "rate-limit" and len(cls.calls) == 1:
            return self._send(429, {"error": {"message": "slow down", "type": "rate_limit"}}, {"Retry-After": "0"})
        if cls.mode == "timeout":
            time.sleep(3)
        if cls.mode == "malformed":
            return self._send(200, {"unexpected": True})
        prompt = body["messages"][-1]["content"]
        answer = prompt.split("Answer to judge: ")[1].split("\n")[0]
        truth = "Correct reference answers" in prompt
        if cls.mode == "every-third" and len(cls.calls) % 3 == 0:
            content, finish = "Perhaps.", "stop"
        elif truth and cls.reply is not None:
            content, finish = cls.reply
        else:
            content, finish = ("Yes." if "true" in answer or not truth else "No."), "stop"
        self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": finish,
                                      "message": {"role": "assistant", "content": content}}]})

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
    Judge.mode, Judge.reply, Judge.calls, Judge.keys = "normal", None, [], []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("LOCCHECK_JUDGE_API_KEY", SECRET)
    monkeypatch.delenv("LOCCHECK_JUDGE_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def _judge(server, tmp_path, **kw):
    return OpenAIJudge(tmp_path / "cache", model="judge-1", base_url=server, **kw)


def _ask(judge, answers):
    return judge.judge(answers, [OK] * len(answers), [BAD] * len(answers), questions=["q?"] * len(answers))


def test_a_normal_reply_and_the_cache(server, tmp_path):
    judge = _judge(server, tmp_path, max_tokens=512, temperature=0.0)
    verdicts = _ask(judge, ["it is true", "it is false"])
    assert verdicts.truthful == (True, False) and verdicts.informative == (True, True)
    assert len(Judge.calls) == 4
    assert all(c["temperature"] == 0 and c["max_tokens"] == 512 and c["model"] == "judge-1" for c in Judge.calls)
    assert Judge.keys[0] == f"Bearer {SECRET}"
    again = _ask(_judge(server, tmp_path, max_tokens=512, temperature=0.0), ["it is true", "it is false"])
    assert again == verdicts and len(Judge.calls) == 4            # served from the reply cache
    assert judge.identity["host"].startswith("127.0.0.1:") and "key" not in json.dumps(judge.identity)
    written = "".join(p.read_text() for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert written and SECRET not in written


def test_the_truth_prompt_carries_the_reference_answers(server, tmp_path):
    _ask(_judge(server, tmp_path), ["it is true"])
    truth, info = (c["messages"][-1]["content"] for c in Judge.calls)
    assert OK[0] in truth and BAD[0] in truth and "Answer to judge: it is true" in truth
    assert "Answer to judge: it is true" in info and OK[0] not in info   # info needs the question only


@pytest.mark.parametrize("max_tokens, temperature", [(7, 0.3), (None, None)])
def test_the_request_settings_are_sent_as_given(server, tmp_path, max_tokens, temperature):
    _ask(_judge(server, tmp_path, max_tokens=max_tokens, temperature=temperature), ["it is true"])
    for call in Judge.calls:
        assert call.get("max_tokens") == max_tokens and call.get("temperature") == temperature
        assert (max_tokens is None) == ("max_tokens" not in call)    # null: not sent at all


@pytest.mark.parametrize("reply, read", [
    ("True", True), ("True.", True), (" Yes.", True), ("Answer: Yes", True), ("**Correct**", True),
    ("False", False), ("No.", False), ("Nope", False), ("Incorrect.", False),
    ("<think>\nThe references say the seeds pass through. The answer agrees.\n</think>\n\nyes", True),
    ("The references disagree. </think> No", False),      # a server that strips the opening tag
    ("", None), ("<think>\nLet me weigh the references", None), ("Perhaps.", None),
])
def test_replies_real_chat_models_give_are_read_or_missing(server, tmp_path, reply, read):
    Judge.reply = (reply, "length" if reply.startswith("<think>\nLet") else "stop")
    verdicts = _ask(_judge(server, tmp_path), ["it is true"])
    assert verdicts.truthful == (read,) and verdicts.informative == (True,)
    assert verdicts.unread == (() if read is not None else (reply,))
    assert read_verdict(reply) is read


def test_an_empty_answer_is_judged_without_asking(server, tmp_path):
    verdicts = _ask(_judge(server, tmp_path), ["", "it is true"])
    assert verdicts.truthful == (True, True) and verdicts.informative == (False, True)
    assert len(Judge.calls) == 2 and all("Answer to judge: it is true" in c["messages"][-1]["content"]
                                         for c in Judge.calls)


def test_a_rate_limit_is_retried(server, tmp_path):
    Judge.mode = "rate-limit"
    assert _ask(_judge(server, tmp_path), ["true"]).truthful == (True,)
    assert len(Judge.calls) == 3                                    # 429, then both prompts


@pytest.mark.parametrize("mode, message, n_requests", [
    ("error", "failed after 2 attempts: HTTP 500: boom", 2),
    ("pinned", "failed after 1 attempt: HTTP 400: Server is pinned to 'x', not 'judge-1'", 1),
    ("detail", "failed after 1 attempt: HTTP 400: temperature must be 1 for this model", 1),
    ("timeout", "failed after 2 attempts: APITimeoutError", 2),
    ("malformed", "malformed reply", 1),
])
def test_failures_are_one_line_say_the_attempts_and_leave_nothing(server, tmp_path, mode, message, n_requests):
    Judge.mode = mode
    start = time.monotonic()
    with pytest.raises(LoccheckError) as err:
        _ask(_judge(server, tmp_path, timeout=1.0, retries=1), ["true"])
    assert message in str(err.value) and "\n" not in str(err.value)
    assert err.value.key.startswith("generation.judge")
    assert time.monotonic() - start < 20                            # bounded in time
    time.sleep(0.1 if mode != "timeout" else 2.5)                   # let a timed-out request land
    assert len(Judge.calls) == n_requests                           # exactly what the message says
    cache = tmp_path / "cache"
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file()]


def _claim(server_or_url, known_llama, tmp_path, extra: str = ""):
    from loccheck.claim import parse_claim
    from loccheck.testing import claim_text

    model_dir, pairs = known_llama
    url = f", judge_base_url: '{server_or_url}'" if server_or_url else ""
    text = claim_text(model_dir, pairs, ["L1H2"], n=19, stop="full") + (
        "metrics: [preference_margin, truth_info]\n"
        f"generation: {{max_new_tokens: 3, judge: openai, judge_model: judge-1{url}{extra}}}\n")
    path = tmp_path / "judged.yaml"
    path.write_text(text)
    return parse_claim(text, path=path)


@pytest.mark.slow
@pytest.mark.parametrize("mode, key, says", [
    ("pinned", "generation.judge_model", "Server is pinned to 'x'"),
    ("closed", "generation.judge_base_url", "failed after 4 attempts: APIConnectionError"),
    ("short", "generation.judge_max_tokens", "stopped at max_tokens = 512"),
    ("detail", "generation.judge_temperature", "temperature must be 1"),
])
def test_the_endpoint_is_checked_before_anything_is_fitted(server, tmp_path, known_llama, mode, key, says):
    from loccheck.run.verify import inspect

    url = server
    if mode == "closed":
        import socket

        with socket.socket() as s:          # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    elif mode == "short":
        Judge.reply = ("<think>\nThe question asks", "length")
    else:
        Judge.mode = mode
    claim = _claim(url, known_llama, tmp_path)
    start = time.monotonic()
    with pytest.raises(ClaimError) as err:
        inspect(claim, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    text = str(err.value)
    assert text.startswith(f"{tmp_path / 'judged.yaml'}:") and f" {key}: " in text and says in text
    assert "\n" not in text and time.monotonic() - start < 20
    assert len(Judge.calls) <= (0 if mode == "closed" else 1)      # one request, not one per answer
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("url", ["http://[127.0.0.1:8000/v1", "http://judge\x1b.local/v1", "localhost:8000",
                                 "http://judge.local/v1[x]"])
def test_a_base_url_that_is_not_a_url_is_a_claim_error(tmp_path, url):
    from loccheck.claim import parse_claim

    text = _claim("http://127.0.0.1:1/v1", (tmp_path / "model", tmp_path / "pairs.jsonl"), tmp_path).path.read_text()
    text = text.replace("'http://127.0.0.1:1/v1'", json.dumps(url))    # JSON strings are YAML: \x1b as \u001b
    with pytest.raises(ClaimError) as err:
        parse_claim(text, path=tmp_path / "judged.yaml")
    text = str(err.value)
    assert text.startswith(f"{tmp_path / 'judged.yaml'}:") and "generation.judge_base_url" in text
    assert "not" in text and "\n" not in text and "\x1b" not in text


@pytest.mark.slow
def test_a_base_url_from_the_environment_is_checked(known_llama, tmp_path, monkeypatch):
    from loccheck.run.verify import inspect

    monkeypatch.setenv("LOCCHECK_JUDGE_BASE_URL", "http://[oops")
    claim = _claim(None, known_llama, tmp_path)
    with pytest.raises(ClaimError, match=r"generation.judge_base_url: \$LOCCHECK_JUDGE_BASE_URL: 'http://\[oops' is not a URL"):
        inspect(claim, out_dir=None, cache_dir=tmp_path / "cache")


@pytest.mark.slow
def test_a_failing_judge_writes_no_report_and_the_key_nowhere(server, tmp_path, known_llama):
    from loccheck.run.verify import verify

    claim = _claim(server, known_llama, tmp_path)
    ok = verify(claim, out_dir=tmp_path / "ok", cache_dir=tmp_path / "cache", progress=False)
    assert 0 <= ok.payload["metric_summaries"]["optimal"]["truth_info"]["claim"]["value"] <= 1
    Judge.mode = "error"
    failing = claim.with_overrides({"generation.max_new_tokens": 2})      # new answers: the judge is asked
    with pytest.raises(ClaimError, match="failed after 4 attempts") as err:
        verify(failing, out_dir=tmp_path / "failed", cache_dir=tmp_path / "cache", progress=False)
    assert str(err.value).startswith(str(tmp_path / "judged.yaml"))     # names the claim file
    assert not (tmp_path / "failed").exists()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_unread_replies_are_missing_values_up_to_the_stated_share(server, tmp_path, known_llama):
    """Every third request reads "Perhaps.": a third of each edit's verdicts are missing. At
    judge_max_unread 0.5 the run completes and counts them; at the default 0.1 it stops with a
    line naming the claim file and the key, and writes nothing."""
    from loccheck.run.verify import verify

    Judge.mode = "every-third"
    tolerant = _claim(server, known_llama, tmp_path, ", judge_max_unread: 0.5")
    result = verify(tolerant.with_overrides({"random_locations.n": 2}), out_dir=tmp_path / "ok",
                    cache_dir=tmp_path / "cache", progress=False)
    for record in [result.payload["base_generations"]] + [e["generations"] for e in result.payload["edits"]]:
        unread = record["n_unread"]["truth"] + record["n_unread"]["info"]
        assert 0 < unread < record["n_asked"] and unread / record["n_asked"] <= 0.5
    assert "| truth unread" in (tmp_path / "ok" / "report.md").read_text()
    strict = _claim(server, known_llama, tmp_path).with_overrides({"generation.max_new_tokens": 2})
    with pytest.raises(ClaimError, match=r"judged.yaml:\d+:\d+: generation.judge_max_unread: \d+ of the "
                                         r"judge's \d+ replies read as neither yes nor no") as err:
        verify(strict, out_dir=tmp_path / "failed", cache_dir=tmp_path / "cache", progress=False)
    assert "'Perhaps.'" in str(err.value) and not (tmp_path / "failed").exists()
