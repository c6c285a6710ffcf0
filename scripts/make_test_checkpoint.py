"""Write a small random Hugging Face checkpoint (and a tokenizer trained on the spot) to a directory.

    python scripts/make_test_checkpoint.py /tmp/tiny-qwen2 --arch qwen2
    cbtui scenario mixed_load --model /tmp/tiny-qwen2

Needs transformers and tokenizers (the test extra); nothing is downloaded. The tests build their
checkpoints with make_checkpoint below: Llama (q/k/v biases, llama3 rope scaling, untied), Qwen2
(biases, tied embeddings, linear rope scaling), Mistral (sliding window); all with GQA.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ARCHS = ("llama", "qwen2", "mistral")
CORPUS = [
    "Continuous batching lets new requests join at token boundaries.",
    "Prefill is long and parallel; decode is short and sequential.",
    "A KV cache stores keys and values so decode attends to history.",
    "The scheduler spends a token budget: decodes first, then prefill chunks.",
    "Paged KV blocks are freed when a request finishes or is preempted.",
    "Hello, world! The quick brown fox jumps over the lazy dog.",
]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def train_tokenizer(vocab_size: int = 384, bos: bool = True):
    """A byte-level BPE tokenizer (as GPT-2, Llama 3 and Qwen2 use), trained on CORPUS; <s>=0, </s>=1."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    if bos:  # a Llama-style tokenizer adds BOS to every text it encodes
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return tok


def model_config(arch: str, vocab_size: int):
    import transformers

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6,
                  initializer_range=0.2, bos_token_id=0, eos_token_id=1, pad_token_id=None)
    if arch == "llama":
        return transformers.LlamaConfig(**common, attention_bias=True, tie_word_embeddings=False, rope_parameters={
            "rope_type": "llama3", "rope_theta": 50000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    if arch == "qwen2":
        return transformers.Qwen2Config(**common, tie_word_embeddings=True, use_sliding_window=False,
                                        rope_parameters={"rope_type": "linear", "rope_theta": 1000000.0, "factor": 2.0})
    if arch == "mistral":
        return transformers.MistralConfig(**{**common, "max_position_embeddings": 1024}, sliding_window=256,
                                          tie_word_embeddings=False)
    raise ValueError(f"arch={arch!r}: choose one of {', '.join(ARCHS)}")


def make_checkpoint(out: Path | str, arch: str = "llama", seed: int = 0, max_shard_size: str | None = None,
                    dtype: str = "float32"):
    """Saves a random `arch` model (safetensors; sharded when max_shard_size is given, e.g. "20KB")
    with its tokenizer into `out`; returns the transformers model (fp32, eval) for comparisons."""
    import torch
    import transformers

    out = Path(out)
    tok = train_tokenizer(bos=arch != "qwen2")  # Qwen2's tokenizer adds no BOS
    config = model_config(arch, tok.get_vocab_size())
    torch.manual_seed(seed)
    cls = {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM,
           "mistral": transformers.MistralForCausalLM}[arch]
    model = cls(config).eval()
    with torch.no_grad():  # biases start at zero: give them values, so loading them is tested
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.5)
    saved = model.to(getattr(torch, dtype))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    saved.save_pretrained(out, safe_serialization=True, **kwargs)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return model.float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="directory to write (created)")
    ap.add_argument("--arch", choices=ARCHS, default="qwen2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-shard-size", default=None, help='e.g. "50KB": several files and an index')
    args = ap.parse_args()
    make_checkpoint(args.out, args.arch, args.seed, args.max_shard_size)
    print(f"wrote a random {args.arch} checkpoint to {args.out}; try: cbtui scenario mixed_load --model {args.out}")


if __name__ == "__main__":
    main()
