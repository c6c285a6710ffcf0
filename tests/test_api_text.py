"""A client's text as it grows (cbtui/api/text.py): never the start of a stop string, never half a
character, and the whole equals the text decoded at once, cut before the stop string."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cbtui.api.text import TextAssembler
from engine.models.tokenizer import ByteTokenizer

TEXT = ByteTokenizer().text


def pieces(ids: list[int], stop: tuple[str, ...] = (), stop_ids: frozenset[int] = frozenset()) -> list[str]:
    text = TextAssembler(TEXT, stop_ids, stop)
    out = [text.add([i]) for i in ids]
    return [*out, text.finish()]


def test_a_stop_string_is_held_back_until_it_is_one_then_cut():
    out = pieces(list(b"say STOP now"), stop=("STOP",))
    assert "".join(out) == "say "
    assert out[:6] == ["s", "a", "y", " ", "", ""]  # "ST" could start STOP: not sent


def test_a_near_miss_is_sent_once_it_cannot_be_a_stop_string():
    assert "".join(pieces(list(b"STOMP"), stop=("STOP",))) == "STOMP"


def test_half_a_character_waits_for_the_rest():
    out = pieces(list("é!".encode()))
    assert out[:2] == ["", "é"] and "".join(out) == "é!"


def test_the_end_of_sequence_token_is_not_text_and_says_stop():
    text = TextAssembler(TEXT, frozenset({0}), ())
    assert text.add(list(b"ab")) + text.add([0]) + text.finish() == "ab" and text.finish_reason == "stop"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 255), max_size=40), st.lists(st.text(min_size=1, max_size=4), max_size=2))
def test_the_pieces_add_up_to_the_whole_text_cut_at_the_first_stop(ids, stop):
    whole = TEXT(ids)
    found = [whole.find(s) for s in stop if s in whole]
    expected = whole[:min(found)] if found else whole
    joined = "".join(pieces(ids, tuple(stop)))
    # the engine would have ended the request at the stop; here the ids go on, and nothing after it is sent
    assert joined == expected
