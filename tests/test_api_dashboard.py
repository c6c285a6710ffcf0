"""`cbtui api` with the dashboard (Pilot, 80x24): a client's request shows in the requests table,
space holds its stream, each n sends it exactly the next token's text, space again lets it finish
with the text the prompt gives alone; the header names the address, and says idle (not finished)
once no request is left; x aborts a client's request (finish_reason "abort")."""

from __future__ import annotations

import asyncio

import openai
import pytest
from dashboard_helpers import NO_GPU, FakeProbe, wait_until

from cbtui.api.dashboard import ApiDashboard
from cbtui.api.hub import EngineHub, ServedEngine
from cbtui.api.routes import build_app
from cbtui.api.server import ServerThread, api_scenario, base_url, bind, default_scenario, served_model
from cbtui.api.text import TextAssembler
from cbtui.run.controller import MAX_SPEED
from engine import Engine, EngineConfig
from engine.models.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
PROMPT, MAX_TOKENS = "watch me", 24  # one prefill chunk: its step samples the first token


def received_after(tokens: list[int]) -> str:
    """What a client has after these tokens: their text, less a half character or open stop string."""
    return TextAssembler(TOK.text, frozenset(), ()).add(tokens)


@pytest.mark.slow
def test_space_holds_the_stream_and_n_sends_one_token():
    engine = Engine(EngineConfig(model="tiny", device="cpu"))
    alone_engine = Engine(EngineConfig(model="tiny", device="cpu"))
    rid = alone_engine.add_request(PROMPT, max_new_tokens=MAX_TOKENS)
    alone = alone_engine.run_until_done()[rid]
    hub = EngineHub(max_requests=8)
    sock = bind("127.0.0.1", 0)
    url = base_url(sock)
    dashboard = ApiDashboard(api_scenario(default_scenario(), url), ServedEngine(engine, hub), speed=MAX_SPEED,
                             probe=FakeProbe([NO_GPU]), memory_poll_s=3600.0)
    hub.controller = dashboard.controller
    server = ServerThread(build_app(hub, served_model(engine)), hub, sock)
    server.start()

    async def scenario():
        api = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        texts: list[str] = []
        finish: list[str | None] = []

        async def read(stream):
            async for chunk in stream:
                texts.append(chunk.choices[0].text)
                finish.append(chunk.choices[0].finish_reason)

        async with dashboard.run_test(size=(80, 24)) as pilot:
            assert url in str(dashboard.query_one("#header").render())
            await pilot.press("space")
            await wait_until(pilot, lambda: dashboard.controller.paused)
            stream = await api.completions.create(model="tiny", prompt=PROMPT, max_tokens=MAX_TOKENS,
                                                  temperature=0, stream=True)
            reader = asyncio.create_task(read(stream))
            await pilot.pause(0.5)
            assert "".join(texts) == "" and dashboard.history.current() is None  # paused: not a step
            for k in range(1, 6):
                await pilot.press("n")
                await wait_until(pilot, lambda k=k: "".join(texts) == received_after(alone[:k])
                                 and dashboard.history.current() is not None
                                 and dashboard.history.current().step == k - 1)
                await pilot.pause(0.2)  # and nothing more comes
                assert "".join(texts) == received_after(alone[:k])
            views = dashboard.history.current().requests
            assert [v.id for v in views] == [0] and views[0].generated == 5
            await pilot.press("space")
            await asyncio.wait_for(reader, 30)
            assert "".join(texts) == TOK.text(alone) and finish[-1] == "length"
            await wait_until(pilot, lambda: " idle " in str(dashboard.query_one("#header").render()))
            # x on the dashboard aborts a client's request: its stream ends with finish_reason "abort"
            texts.clear()
            finish.clear()
            long = await api.completions.create(model="tiny", prompt="abort me", max_tokens=3000, temperature=0,
                                                stream=True)
            reader = asyncio.create_task(read(long))
            await wait_until(pilot, lambda: len(texts) > 3)
            await pilot.press("down")
            await wait_until(pilot, lambda: dashboard.selected == 1)
            await pilot.press("x")
            await asyncio.wait_for(reader, 30)
            assert finish[-1] == "abort" and len(texts) < 3000
            await api.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
        dashboard.controller.stop()
