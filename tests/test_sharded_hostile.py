"""#30: a sharded run is not a door into the machine. The rendezvous store listens on loopback only
(it has no authentication: anyone who reaches it reads and writes its keys), and the step plan the
driver broadcasts is JSON a worker decodes, never a pickle it would run. Every wait is bounded."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
from helpers import sharded_time_limit

from engine import Engine, EngineConfig
from engine.distributed.shard_runner import StepPlan, decode_plan, encode_plan


@pytest.fixture(autouse=True)
def bounded():
    yield from sharded_time_limit()


def listening_sockets(pid: int) -> list[tuple[str, int]]:
    """(local address, port) of each TCP socket process `pid` listens on (Linux /proc, no traffic)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # LISTEN
                address, port = local.split(":")
                found.append((_address(address, width), int(port, 16)))
    return found


def _address(hex_address: str, width: int) -> str:
    raw = bytes.fromhex(hex_address)
    if width == 8:
        return ".".join(str(b) for b in raw[::-1])
    words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]  # four little-endian 32-bit words
    full = b"".join(words)
    return "::" if full == bytes(16) else full.hex()


def test_a_sharded_engine_listens_on_loopback_only():
    """The store (and gloo's own sockets) on 127.0.0.1, in the driver and in every worker."""
    engine = Engine(EngineConfig(model="tiny", device="cpu", shards=2, shard_timeout_s=20.0))
    try:
        engine.add_request("hello there", max_new_tokens=2)
        engine.run_until_done()
        for pid in (os.getpid(), *engine.runner.worker_pids):
            sockets = listening_sockets(pid)
            assert all(address == "127.0.0.1" for address, _ in sockets), (pid, sockets)
        assert listening_sockets(os.getpid()), "the driver's store should be listening"
    finally:
        engine.close()


PLAN = StepPlan(step=7, items=[(3, "prefill", 0, 4, 4), (5, "decode", 9, 1, 10)], tokens=[[1, 2, 3, 4], [42]],
                samples=[True, True], tables={3: (0, 1), 5: (2, 3, 4)}, forget=[1, 2], stop=False)


def test_a_plan_is_json_and_round_trips_exactly():
    data = encode_plan(PLAN)
    assert json.loads(data)["step"] == 7 and b"\x80" not in data  # JSON, no pickle opcode
    assert decode_plan(data) == PLAN
    stop = StepPlan(step=-1, items=[], tokens=[], samples=[], stop=True)
    assert decode_plan(encode_plan(stop)) == stop


class Planted:
    """What a pickle could make a worker run while unpickling: here, write a file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "ran"))


def test_a_pickle_is_refused_and_never_run(tmp_path):
    witness = tmp_path / "witness"
    for payload in (pickle.dumps(Planted(str(witness))), pickle.dumps(PLAN), pickle.dumps(PLAN, protocol=0)):
        with pytest.raises(ValueError, match="step plan"):
            decode_plan(payload)
    assert not witness.exists()


@pytest.mark.parametrize("payload", [
    b"", b"\xff\xfe", b"null", b"[]", b"{}", b"[" * 100_000, b'{"step": ' + b"9" * 5000 + b"}",
    json.dumps({"step": 1}).encode(),
    encode_plan(PLAN).replace(b'"step":7', b'"step":"7"'),
    encode_plan(PLAN).replace(b'"stop":false', b'"stop":0'),
    encode_plan(PLAN).replace(b'"prefill"', b'17'),
    encode_plan(PLAN).replace(b'[3,"prefill",0,4,4]', b'[3,"prefill",0,4]'),
    encode_plan(PLAN).replace(b'"3":[0,1]', b'"x":[0,1]'),
    encode_plan(PLAN).replace(b'"3":[0,1]', b'"3":[0,"1"]'),
    encode_plan(PLAN).replace(b'"samples":[true,true]', b'"samples":[true]'),
    encode_plan(PLAN).replace(b'"forget":[1,2]', b'"forget":[1.5]'),
    encode_plan(PLAN)[:-1] + b',"extra":1}',
], ids=lambda p: p[:24].decode("utf-8", "replace"))
def test_anything_but_a_plan_is_one_line_value_error(payload):
    with pytest.raises(ValueError) as caught:
        decode_plan(payload)
    assert "\n" not in str(caught.value) and "step plan" in str(caught.value)


def test_no_pickle_in_the_shards_wire():
    """comm.py sends bytes it is given; nothing in engine/distributed unpickles."""
    import engine.distributed as package

    for source in Path(package.__file__).parent.glob("*.py"):
        text = source.read_text()
        assert "pickle" not in text.replace("not a pickle", "").replace("never a pickle", ""), source.name
