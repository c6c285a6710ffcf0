from engine.models.tokenizer import decode, encode


def test_round_trip_and_unprintables():
    assert decode(encode("Hello, é!")) == "Hello, é!"
    assert decode([57, 200, 10, 104, 105]) == "9··hi"  # a stray byte and a newline become dots
    assert decode([300, 65]) == "·A"  # ids beyond a byte (bigger vocabularies)
