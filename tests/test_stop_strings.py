"""Stop strings end a request at the step whose token completes one in its decoded text (engine
side, so its blocks free then); the record says finished; bad ones are refused in one line."""

from __future__ import annotations

import pytest

from engine import Engine, EngineConfig
from engine.models.tokenizer import ByteTokenizer
from engine.requests.stop_strings import StopStrings

decode = ByteTokenizer().text


def greedy(prompt: str, stop=None, max_new_tokens: int = 40) -> tuple[list[int], list]:
    eng = Engine(EngineConfig(model="tiny", device="cpu"))
    rid = eng.add_request(prompt, max_new_tokens=max_new_tokens, stop=stop)
    records = []
    while eng.has_unfinished():
        records.append(eng.step())
    return eng.requests[rid].output, records


def test_a_stop_string_ends_the_request_at_the_token_that_completes_it():
    full, _ = greedy("stop strings please")
    text = decode(full)
    stop = text[20:23]
    first = text.find(stop)
    out, records = greedy("stop strings please", stop=[stop, "never appears \x00"])
    assert decode(out) == text[:first + len(stop)]  # bytes: one token a character
    assert records[-1].finished == [0] and not records[-1].aborted
    assert records[-1].kv.freed == [0] and records[-1].kv.blocks_used == 0  # its blocks go back at that step
    assert StopStrings([stop], decode).cut(decode(out)) == (text[:first], True)


def test_no_stop_string_in_the_text_changes_nothing():
    assert greedy("plain", stop="\x00\x00never")[0] == greedy("plain")[0]


@pytest.mark.parametrize("bad", [5, [1], ["a"] * 5, [""], ["x" * 201]])
def test_bad_stop_strings_are_refused(bad):
    eng = Engine(EngineConfig(model="tiny", device="cpu"))
    with pytest.raises(ValueError, match="stop"):
        eng.add_request("x", stop=bad)
    assert not eng.has_unfinished()


def test_a_scenario_request_takes_stop_and_top_p(tmp_path):
    from scenarios import ScenarioError, load_scenario

    path = tmp_path / "stops.toml"
    path.write_text('title = "t"\ndescription = "d"\n[[requests]]\nprompt = "x"\ntemperature = 0.5\n'
                    'top_p = 0.25\nstop = ["\\n\\n", "END"]\n')
    engine = load_scenario(str(path)).build_engine()
    request = engine.requests[0]
    assert request.top_p == 0.25 and request.stop is not None and request.stop.strings == ("\n\n", "END")
    path.write_text('title = "t"\ndescription = "d"\n[[requests]]\nprompt = "x"\nstop = ["a", 3]\n')
    with pytest.raises(ScenarioError, match=r"\[\[requests\]\] #1 stop: .* must be a string or a list of strings"):
        load_scenario(str(path))
