"""The bridge of `cbtui api` (cbtui/api/hub.py) with a real engine thread and no HTTP: tokens come
from the steps, so a paused controller holds every client and one step sends each running client
exactly one token; an engine that fails ends every stream with its reason; a restart's reset too."""

from __future__ import annotations

import asyncio

import pytest

from cbtui.api.errors import APIError
from cbtui.api.hub import EngineHub, ServedEngine
from cbtui.api.translate import Generation
from cbtui.run.controller import MAX_SPEED, EngineController
from engine import Engine, EngineConfig


def gen(prompt: str, max_tokens: int = 50) -> Generation:
    return Generation(list(prompt.encode()), max_tokens, 0.0, 1.0, None, (), True, False)


async def drain(queue: asyncio.Queue, wait: float) -> list:
    items = []
    try:
        while True:
            items.append(await asyncio.wait_for(queue.get(), wait))
    except asyncio.TimeoutError:
        return items


def test_paused_holds_every_stream_and_one_step_sends_one_token_each():
    async def scenario():
        hub = EngineHub(max_requests=10)
        engine = Engine(EngineConfig(model="tiny", device="cpu"))
        controller = EngineController(ServedEngine(engine, hub), lambda r: None, lambda s: None, paused=True,
                                      speed=MAX_SPEED)
        hub.controller = controller
        controller.start()
        try:
            streams = [await hub.submit(gen(f"client {i}")) for i in range(3)]
            await asyncio.sleep(0.3)  # paused: nothing comes, however long one waits
            assert all(s.queue.empty() for s in streams)
            for _ in range(4):
                controller.step_once()
                got = [await asyncio.wait_for(s.queue.get(), 10) for s in streams]
                assert all(len(tokens) == 1 and end is None for tokens, end in got)
                await asyncio.sleep(0.05)  # and nothing more after it
                assert all(s.queue.empty() for s in streams)
            assert [s.request_id for s in streams] == [0, 1, 2]
        finally:
            controller.stop()

    asyncio.run(scenario())


def test_a_failing_engine_ends_every_stream_and_refuses_new_requests():
    async def scenario():
        hub = EngineHub(max_requests=10)
        engine = Engine(EngineConfig(model="tiny", device="cpu"))

        def broken():
            raise RuntimeError("the device fell over\nsecond line")
        controller = EngineController(ServedEngine(engine, hub), lambda r: None, lambda s: None, paused=True)
        hub.controller = controller
        controller.start()
        try:
            stream = await hub.submit(gen("doomed"))
            engine.step = broken  # the next step raises, on the engine thread
            controller.step_once()
            (tokens, end), = await drain(stream.queue, 1.0)
            assert tokens == [] and end == "the engine stopped on an error: the device fell over"
            with pytest.raises(APIError, match="the device fell over") as caught:
                await hub.submit(gen("next"))
            assert caught.value.status == 503
        finally:
            controller.stop()

    asyncio.run(scenario())


def test_a_full_hub_refuses_with_429_and_an_engine_refusal_is_400():
    async def scenario():
        hub = EngineHub(max_requests=1)
        engine = Engine(EngineConfig(model="tiny", device="cpu", num_blocks=4, block_size=16))
        controller = EngineController(ServedEngine(engine, hub), lambda r: None, lambda s: None, paused=True)
        hub.controller = controller
        controller.start()
        try:
            with pytest.raises(APIError, match="num_blocks=4 is too small") as caught:  # 201 tokens: 13 blocks
                await hub.submit(gen("x", max_tokens=200))
            assert caught.value.status == 400 and hub.live == 0  # the refused one holds no place
            await hub.submit(gen("x"))
            with pytest.raises(APIError, match="the server is full") as caught:
                await hub.submit(gen("y"))
            assert caught.value.status == 429 and hub.live == 1
        finally:
            controller.stop()

    asyncio.run(scenario())


def test_letting_a_stream_go_twice_frees_one_place_and_aborts_it_once():
    async def scenario():
        hub = EngineHub(max_requests=2)
        engine = Engine(EngineConfig(model="tiny", device="cpu"))
        records = []
        controller = EngineController(ServedEngine(engine, hub), records.append, lambda s: None, paused=True)
        hub.controller = controller
        controller.start()
        try:
            stream = await hub.submit(gen("let go"))
            other = await hub.submit(gen("stays"))
            hub.ended(stream)  # the generator's finally, then the response's: one release
            hub.ended(stream)
            assert hub.live == 1
            controller.step_once()
            await asyncio.sleep(0.5)
            assert records and records[0].aborted == [stream.request_id]
            assert other.request_id not in records[0].aborted
        finally:
            controller.stop()

    asyncio.run(scenario())
