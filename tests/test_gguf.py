"""GGUF checkpoints (--model FILE.gguf): small random Llama models written with gguf.GGUFWriter in each
quant type, converted by engine/models/gguf_file.py. Logits agree with transformers' own GGUF loading,
greedy tokens are identical, the tokenizer and the chat template give transformers' ids; the second
start reads the converted cache only. Nothing is downloaded."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf_helpers import write_gguf
from helpers import our_logits

from engine import Engine, EngineConfig
from engine.models import gguf_file, source
from engine.models.checkpoint import CheckpointError
from engine.models.packaged import PACKAGES, packaged_path

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers' GGUF loading needs it

ROOT = Path(__file__).resolve().parent.parent
TYPES = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
TEXTS = ["Continuous batching lets new requests join.", "Hello, world!", "A KV cache stores keys",
         "The scheduler spends a token budget: decodes first, then prefill chunks.", "Paged 2024 <s> x</s>"]
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _maker():
    spec = importlib.util.spec_from_file_location("make_test_checkpoint", ROOT / "scripts" / "make_test_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CBTUI_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A plain Llama (no biases, default rope; rows of 256 for the K-quants) with a trained tokenizer."""
    out = tmp_path_factory.mktemp("llama")
    tok = _maker().train_tokenizer(bos=True)
    config = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=256, intermediate_size=256,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=512, rms_norm_eps=1e-6, initializer_range=0.05,
                                      bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(out)
    return out


def _hf(path: Path):
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval()


def _engine(path: Path) -> Engine:
    return Engine(EngineConfig(model=str(path), device="cpu", dtype="float32", attention="sdpa"))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_logits_and_greedy_tokens_match_transformers_gguf_loading(checkpoint, tmp_path, qtype):
    path = write_gguf(tmp_path / f"m-{qtype.name}.gguf", checkpoint, qtype, chat_template=TEMPLATE)
    engine, hf = _engine(path), _hf(path)
    for text in TEXTS[:3]:
        ids = engine.tokenizer.encode(text)
        with torch.no_grad():
            ref = hf(torch.tensor([ids])).logits[0]
        ours = our_logits(engine, ids)
        assert torch.allclose(ours, ref, atol=1e-4 * max(1.0, ref.abs().max().item())), (ours - ref).abs().max()
        greedy = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(ids):]
        greedy = greedy.tolist()
        assert greedy == _greedy(path, ids, 8)


def _greedy(path: Path, ids: list[int], n: int) -> list[int]:
    engine = Engine(EngineConfig(model=str(path), device="cpu", dtype="float32", attention="sdpa", ignore_eos=True))
    rid = engine.add_request(ids, max_new_tokens=n)
    return engine.run_until_done()[rid]


def test_tokenizer_and_chat_template_equal_transformers(checkpoint, tmp_path):
    path = write_gguf(tmp_path / "m.gguf", checkpoint, T.F16, chat_template=TEMPLATE)
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ours = source.tokenizer_for(str(path))
    for text in TEXTS:
        assert ours.encode(text) == tok(text)["input_ids"], text
        ids = ours.encode(text)
        assert ours.decode(ids) == tok.decode(ids, skip_special_tokens=False)
        chat = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
        chat = chat["input_ids"] if hasattr(chat, "keys") else chat
        assert ours.chat_prompt(text) == list(chat), text
    assert source.eos_token_ids(str(path)) == (1,)


def test_second_start_reads_the_cache_only(checkpoint, tmp_path, cache, monkeypatch):
    path = write_gguf(tmp_path / "m.gguf", checkpoint, T.Q8_0)
    spec = source.model_spec(str(path))
    assert (spec.name, spec.num_layers, spec.hidden_size, spec.vocab_size) == ("m", 2, 256, 384)
    monkeypatch.setattr(gguf_file, "_read", lambda p: pytest.fail("read the GGUF file again"))
    assert source.model_spec(str(path)) == spec
    assert list((cache / "converted").iterdir())[0].name.startswith("m-")
    assert not [p for p in (cache / "converted").iterdir() if p.name.endswith(".partial")]


def test_shapes_that_disagree_with_the_metadata_are_one_line(checkpoint, tmp_path):
    liar = tmp_path / "liar"
    shutil.copytree(checkpoint, liar)
    config = json.loads((liar / "config.json").read_text())
    (liar / "config.json").write_text(json.dumps({**config, "intermediate_size": 512}))
    path = write_gguf(tmp_path / "liar.gguf", liar, T.F16)
    with pytest.raises(CheckpointError, match="has shape .* but the metadata implies") as info:
        source.resolve(str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)


@pytest.mark.slow
def test_real_smollm2_when_pulled(monkeypatch):
    """The packaged SmolLM2-135M-Instruct, if `cbtui pull smollm2` put it in the default cache."""
    monkeypatch.delenv("CBTUI_CACHE_DIR")
    if not packaged_path("smollm2").is_file():
        pytest.skip(f"smollm2 is not pulled ({packaged_path('smollm2')}); run `cbtui pull smollm2`")
    path = packaged_path("smollm2")
    engine = Engine(EngineConfig(model="smollm2", device="cpu", dtype="float32", attention="sdpa"))
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    hf = _hf(path)
    for text in ["What is the capital of France?", "Write a haiku about batching.", "2 + 2 = 4 and 12 * 12 = 144"]:
        assert engine.tokenizer.encode(text) == tok(text)["input_ids"]
        chat = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
        ids = list(chat["input_ids"] if hasattr(chat, "keys") else chat)
        assert engine.tokenizer.chat_prompt(text) == ids
        greedy = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(ids):]
        assert _greedy_model("smollm2", ids, 12) == greedy.tolist()
    assert PACKAGES["smollm2"].size == path.stat().st_size


def _greedy_model(model: str, ids: list[int], n: int) -> list[int]:
    return _greedy(Path(model), ids, n)


def test_the_bench_gives_transformers_the_directory_a_gguf_file_became(checkpoint, tmp_path):
    """cbtui bench --model FILE.gguf (or smollm2): its transformers rows load the converted directory,
    not the setting (which transformers would take for a Hub name)."""
    from cbtui.bench.run import _hf_from_checkpoint

    path = write_gguf(tmp_path / "m.gguf", checkpoint, T.F32)
    engine = _engine(path)
    ids = engine.tokenizer.encode(TEXTS[0])
    with torch.no_grad():
        theirs = _hf_from_checkpoint(engine)(torch.tensor([ids])).logits[0]
        ref = _hf(path)(torch.tensor([ids])).logits[0]
    assert torch.allclose(theirs, ref, atol=1e-4 * max(1.0, ref.abs().max().item()))
