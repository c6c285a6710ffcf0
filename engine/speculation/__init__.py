"""Speculative decoding: a decode also verifies k proposed tokens, in the same ragged batch.

A speculating decode is one item of 1 + k query tokens (its last token, then the drafts), causal
over its history and its own drafts, mixed with ordinary decodes and prefill chunks. The target's
logits at all 1 + k rows decide how many drafts stand (acceptance.py); the keys and values of the
rejected ones are rolled back (speculator.py). The pieces:

  ngram.py        prompt lookup: propose what followed the last n tokens earlier in the sequence
  draft_model.py  a smaller model of the same vocabulary, with its own KV cache, proposes greedily
  acceptance.py   greedy (longest matching prefix + the target's next token) and rejection sampling
  rows.py         paged: the 1 + k rows run as one-token decodes (the decode fast path and graphs)
  speculator.py   what the scheduler asks (drafts wanted) and the runner (proposals, draft rollback)
The budget's share for drafts is the scheduler's (`Scheduler._allot_drafts`), and so is giving back
the blocks of rejected drafts (`Scheduler.update`).
"""
