"""The KV cache, split as vLLM splits it: who holds which block, and where the tensors are.

The scheduler's side, plain Python (no torch):
  block_manager.py    BlockManager: admission, allocation, prefix sharing and reference counts,
                      contiguous runs, preemption victims, draft rollback, early eviction
  prefix_cache.py     full blocks named by a chained hash of their tokens, shared and kept cached
  contiguous_runs.py  a request's whole length reserved in one run of consecutive blocks
The runner's side, torch:
  paged_store.py      PagedKVStore: the block pools, slot mapping, read and write
  dense_store.py      DenseKVStore: per-request tensors, grown on demand (no blocks to manage)
  int8_pool.py        a paged pool stored as int8 (the kv_int8 plugin swaps it in)
Each step's plan carries the block manager's changes to the store.
"""
