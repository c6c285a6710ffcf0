"""`cbtui api` driven by the official `openai` client, as users drive it: a real server process on
127.0.0.1 (tests/api_helpers.py), the tiny random-weight model, greedy outputs compared with the
same prompts run alone through an Engine; streaming, stop strings, a client that hangs up (its
request is aborted: the recording says so), and every refusal in OpenAI's error shape."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys

import openai
import pytest
from api_helpers import ROOT, ApiProcess, raw_request, wait_for

from cbtui.api.prompts import chat_prompt
from engine import Engine, EngineConfig
from engine.models.tokenizer import ByteTokenizer

TOK = ByteTokenizer()


def alone(prompt: list[int], max_tokens: int) -> str:
    """The greedy answer of the prompt run alone, as the server's text."""
    eng = Engine(EngineConfig(model="tiny", device="cpu"))
    rid = eng.add_request(prompt, max_new_tokens=max_tokens)
    return TOK.text(eng.run_until_done()[rid])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    record = tmp_path_factory.mktemp("api") / "session.jsonl"
    with ApiProcess("--record", str(record)) as proc:
        proc.record = record
        yield proc


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"


def test_a_greedy_completion_equals_the_prompt_run_alone(client):
    reply = client.completions.create(model="tiny", prompt="Hello there", max_tokens=12, temperature=0)
    assert reply.choices[0].text == alone(TOK.encode("Hello there"), 12)
    assert reply.choices[0].finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (11, 12, 23)


def test_streaming_sends_the_same_text_in_chunks_and_ends(client):
    chunks = list(client.completions.create(model="tiny", prompt="stream me", max_tokens=10, temperature=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == alone(TOK.encode("stream me"), 10)
    assert [c.choices[0].finish_reason for c in chunks][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_chat_whole_and_streamed_equal_the_rendered_prompt_run_alone(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why batch?"}]
    expected = alone(chat_prompt(TOK, messages), 9)
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=9, temperature=0)
    assert whole.choices[0].message.content == expected and whole.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=9, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].usage.completion_tokens == 9 and not chunks[-1].choices


def test_the_raw_stream_is_server_sent_events_ending_in_done(server):
    status, _, body = raw_request(server.host_port, "POST", "/v1/completions",
                                  json.dumps({"model": "tiny", "prompt": "sse", "max_tokens": 3,
                                              "temperature": 0, "stream": True}).encode())
    assert status == 200
    events = body.decode("utf-8", "replace").split("\n\n")
    data = [e for e in events if e.startswith("data: ")]
    assert events[-1] == "" and data == events[:-1]  # nothing but events
    assert data[-1] == "data: [DONE]" and len(data) >= 3
    assert json.loads(data[-2][6:])["choices"][0]["finish_reason"] == "length"


def test_a_stop_string_cuts_the_text_and_says_stop(client):
    full = alone(TOK.encode("stop here"), 30)
    stop = full[12:14]
    cut = full[:full.find(stop)]
    reply = client.completions.create(model="tiny", prompt="stop here", max_tokens=30, temperature=0, stop=[stop])
    assert (reply.choices[0].text, reply.choices[0].finish_reason) == (cut, "stop")
    assert reply.usage.completion_tokens < 30  # the engine ended it there: no tokens past the stop
    chunks = list(client.completions.create(model="tiny", prompt="stop here", max_tokens=30, temperature=0,
                                            stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == cut and chunks[-1].choices[0].finish_reason == "stop"


def test_seeded_sampling_repeats_and_top_p_is_taken(client):
    def ask(**kw):
        return client.completions.create(model="tiny", prompt="sample", max_tokens=12, **kw).choices[0].text
    assert ask(temperature=0.9, seed=7) == ask(temperature=0.9, seed=7)
    assert ask(temperature=0.9, seed=7) != ask(temperature=0.9, seed=8)
    assert ask(temperature=1.0, top_p=1e-6, seed=3) == ask(temperature=0)  # a tiny nucleus is greedy


@pytest.mark.parametrize("kwargs, status, words", [
    (dict(model="gpt-4"), 404, "does not exist; this server serves 'tiny'"),
    (dict(n=2), 400, "n=2 is not supported"),
    (dict(logprobs=2), 400, "logprobs=2 is not supported"),
    (dict(presence_penalty=0.5), 400, "presence_penalty=0.5 is not supported"),
    (dict(temperature=3), 400, "temperature=3 must be a number in 0..2"),
    (dict(max_tokens=0), 400, "max_tokens=0 must be an integer >= 1"),
    (dict(prompt="x" * 5000), 400, "maximum context length is 4096 tokens"),
    (dict(stop=["a"] * 5), 400, "at most 4"),
    (dict(extra_body={"temperature": "hot"}), 400, "temperature='hot' must be a number"),
    (dict(extra_body={"frobnicate": 1}), 400, "Unrecognized request argument supplied: frobnicate"),
])
def test_bad_requests_get_openai_shaped_errors(client, kwargs, status, words):
    args = dict(model="tiny", prompt="hello", max_tokens=4) | kwargs
    with pytest.raises(openai.APIStatusError) as caught:
        client.completions.create(**args)
    assert caught.value.status_code == status
    error = caught.value.body
    assert words in error["message"] and set(error) == {"message", "type", "param", "code"}


def test_chat_with_tools_is_refused(client):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(openai.BadRequestError, match="tools="):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], tools=tools)


@pytest.mark.parametrize("body, words", [(b"{not json", "not valid JSON"), (b"[1, 2]", "must be a JSON object"),
                                         (b'{"model": "tiny", "prompt": 5}', "prompt must be a string"),
                                         (b"\xff\xfe{}", "not valid JSON"),
                                         (b"[" * 100_000 + b"]" * 100_000, "nests too deeply")])
def test_malformed_bodies_are_400(server, body, words):
    status, error, _ = raw_request(server.host_port, "POST", "/v1/completions", body)
    assert status == 400 and words in error["error"]["message"]


def test_health_says_ok(server):
    status, body, _ = raw_request(server.host_port, "GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["model"] == "tiny"


def test_an_unknown_endpoint_is_404(server):
    status, error, _ = raw_request(server.host_port, "GET", "/v2/nothing")
    assert status == 404 and "no such endpoint" in error["error"]["message"]


def recorded(path) -> list[dict]:
    records = []
    for line in path.read_text().splitlines()[1:]:  # the header, then one record a line
        try:
            records.append(json.loads(line))
        except ValueError:  # the line being written
            break
    return records


def test_a_client_that_hangs_up_mid_stream_is_aborted_and_others_lose_nothing(server, client):
    body = json.dumps({"model": "tiny", "prompt": "long one", "max_tokens": 3000, "temperature": 0,
                       "stream": True}).encode()
    sock = socket.create_connection(server.host_port, timeout=30)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    seen = b""
    while b"data: " not in seen:  # the headers, then the first event
        chunk = sock.recv(4096)
        assert chunk, "the server closed the stream before any event"
        seen += chunk
    before = len(recorded(server.record))
    neighbour = client.completions.create(model="tiny", prompt="neighbour", max_tokens=40, temperature=0,
                                          stream=True)
    first = next(iter(neighbour))
    sock.close()  # hang up
    rest = "".join(c.choices[0].text for c in neighbour)
    assert first.choices[0].text + rest == alone(TOK.encode("neighbour"), 40)  # nothing lost

    def aborted() -> list[int]:
        return [rid for r in recorded(server.record)[before:] for rid in r["aborted"]]
    wait_for(lambda: aborted(), 30, "the hung-up request's abort in the recording")
    records = recorded(server.record)
    rid = aborted()[0]
    tokens = sum(1 for r in records if str(rid) in r["sampled"])
    assert tokens < 3000  # it stopped when its client left, long before max_tokens
    assert "Traceback" not in "".join(server.errors)


def send_raw(host_port, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    sock = socket.create_connection(host_port, timeout=30)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return sock


def test_a_client_that_hangs_up_while_waiting_for_a_whole_answer_is_aborted(server):
    before = len(recorded(server.record))
    sock = send_raw(server.host_port, {"model": "tiny", "prompt": "whole, then gone", "max_tokens": 3000,
                                       "temperature": 0})
    wait_for(lambda: any(r["running"] for r in recorded(server.record)[before:]), 30, "the request to run")
    sock.close()
    wait_for(lambda: any(r["aborted"] for r in recorded(server.record)[before:]), 30, "its abort in the recording")


@pytest.mark.slow  # measured: 1.5 s or more
def test_ctrl_c_ends_open_requests_with_an_error_and_no_traceback():
    with ApiProcess() as proc:
        stream = send_raw(proc.host_port, {"model": "tiny", "prompt": "s", "max_tokens": 3000, "stream": True})
        whole = send_raw(proc.host_port, {"model": "tiny", "prompt": "w", "max_tokens": 3000})
        seen = b""
        while b"data: " not in seen:
            seen += stream.recv(4096)
        assert proc.stop() == 130  # as after any Ctrl+C
        rest = b""
        while chunk := stream.recv(65536):
            rest += chunk
        assert b'"message":"the server is shutting down"' in rest and b"data: [DONE]" in rest
        answer = whole.recv(65536)
        assert answer.startswith(b"HTTP/1.1 503") and b"the server is shutting down" in answer
    assert "Traceback" not in "".join(proc.errors) and "ERROR" not in "".join(proc.errors)


@pytest.mark.slow  # measured: 1.5 s or more
def test_many_concurrent_streaming_clients_all_finish_as_if_alone(server):
    n, max_tokens = 100, 8
    prompts = [f"client {i} asks" for i in range(n)]

    async def one(api, prompt):
        stream = await api.completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens, temperature=0,
                                              stream=True)
        return "".join([c.choices[0].text async for c in stream])

    async def everyone():
        api = openai.AsyncOpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
        try:
            return await asyncio.wait_for(asyncio.gather(*(one(api, p) for p in prompts)), 120)
        finally:
            await api.close()

    before = len(recorded(server.record))
    texts = asyncio.run(everyone())
    assert texts == [alone(TOK.encode(p), max_tokens) for p in prompts]
    # they really shared steps: some step ran many of them at once
    assert max(r["running"] for r in recorded(server.record)[before:]) >= 20


@pytest.fixture(scope="module")
def strict():
    with ApiProcess("--max-requests", "1", "--max-body", "1024", "--api-key", "sekrit", "--speed", "20") as proc:
        yield proc


def test_the_api_key_is_required(strict):
    for key in ("wrong", ""):
        with pytest.raises(openai.AuthenticationError, match="API key"):
            openai.OpenAI(base_url=strict.url, api_key=key or "x", max_retries=0).models.list()
    assert openai.OpenAI(base_url=strict.url, api_key="sekrit", max_retries=0).models.list().data[0].id == "tiny"


def test_a_body_over_the_limit_is_413(strict):
    body = json.dumps({"model": "tiny", "prompt": "x" * 2000}).encode()
    status, error, _ = raw_request(strict.host_port, "POST", "/v1/completions", body,
                                   {"Authorization": "Bearer sekrit"})
    assert status == 413 and "at most 1024" in error["error"]["message"]


def test_a_full_server_says_429_and_serves_again_once_there_is_room(strict):
    api = openai.OpenAI(base_url=strict.url, api_key="sekrit", max_retries=0, timeout=60)
    long = api.completions.create(model="tiny", prompt="hold the slot", max_tokens=2000, stream=True)
    next(iter(long))
    with pytest.raises(openai.RateLimitError, match="the server is full: 1 requests"):
        api.completions.create(model="tiny", prompt="one more", max_tokens=2)
    long.close()  # hangs up: its request is aborted and its slot freed
    wait_for(lambda: _answers(api), 30, "the server to take requests again")


def _answers(api) -> bool:
    try:
        return len(api.completions.create(model="tiny", prompt="again", max_tokens=2).choices[0].text) > 0
    except openai.RateLimitError:
        return False


@pytest.mark.slow  # measured: 1.5 s or more
def test_a_taken_port_is_one_line_and_exit_2(server):
    done = subprocess.run([sys.executable, "-m", "cbtui", "api", "--headless", "--port", str(server.host_port[1])],
                          capture_output=True, text=True, timeout=90, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 2
    assert done.stderr.startswith("cbtui: error: cannot listen on 127.0.0.1:") and done.stderr.count("\n") == 1


@pytest.mark.slow
def test_smollm2_answers_a_chat_through_its_template_and_stops_at_end_of_turn(monkeypatch):
    from engine.models.packaged import is_pulled, packaged_path

    monkeypatch.delenv("CBTUI_CACHE_DIR", raising=False)  # the default cache, where `cbtui pull` puts it
    if not is_pulled("smollm2"):
        pytest.skip(f"smollm2 is not pulled ({packaged_path('smollm2')}); run `cbtui pull smollm2`")
    with ApiProcess("--model", "smollm2") as proc:
        api = openai.OpenAI(base_url=proc.url, api_key="unused", max_retries=0, timeout=120)
        assert [m.id for m in api.models.list().data] == ["smollm2"]
        reply = api.chat.completions.create(model="smollm2", temperature=0, max_tokens=30,
                                            messages=[{"role": "user", "content": "What is the capital of France?"}])
        answer = reply.choices[0].message.content
        assert "Paris" in answer and "<|im_end|>" not in answer  # the end-of-turn token is not text
        assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens < 30
        counted = api.chat.completions.create(model="smollm2", temperature=0, max_tokens=40, stop=["6"],
                                              messages=[{"role": "user",
                                                         "content": "Count from 1 to 10, separated by commas."}])
        assert counted.choices[0].message.content.rstrip(", ").endswith("5")
        assert counted.choices[0].finish_reason == "stop"


def test_the_recorded_session_replays_like_any_run(server, client):
    from engine.records.recording import open_recording

    client.completions.create(model="tiny", prompt="for the record", max_tokens=3, temperature=0)
    # the client may have its answer a moment before the step's line is written (hub, then recording)
    wait_for(lambda: server.record.read_text().endswith("\n"), 10, "the last line")
    recording = open_recording(str(server.record))
    assert recording.header.title.startswith("cbtui api · http://127.0.0.1:")
    records = list(recording.records())
    assert records and all(r.step == i for i, r in enumerate(records))  # every step, in order
