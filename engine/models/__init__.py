"""The model and where its weights and tokenizer come from.

  llama.py       the Llama-style decoder (RMSNorm, RoPE, GQA, SwiGLU) and the random presets
  checkpoint.py  a local Hugging Face checkpoint: its config, weights and end-of-sequence ids
  hf_weights.py  a checkpoint's tensors mapped onto the decoder's
  tokenizer.py   bytes for a preset, the checkpoint's tokenizer.json otherwise
"""
