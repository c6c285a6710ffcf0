"""The runner's side of a step: everything that touches tensors and the device.

  model_runner.py   ModelRunner: takes a plan's KV changes into its store, runs the packed batch,
                    verifies drafts, samples, and says what happened in one StepOutput (output.py)
  batch_builder.py  the step's items as one ragged batch (no padding) and its causal mask
  decode_graphs.py  decode-only steps replayed from CUDA graphs
  overlap.py        overlapped steps: the next step launched while the device runs this one
  sampling.py, device_timer.py
The KV stores it owns are in engine/kv/ (paged_store.py, dense_store.py); attention in engine/attention/.
"""
