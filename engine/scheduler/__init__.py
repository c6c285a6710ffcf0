"""The scheduler's side of a step, plain Python (no torch; an import-linter contract says so).

  scheduler.py  Scheduler: schedule() plans a step under the token budget (decodes first, then
                prefill chunks, then admission; preemption; a reason for every request left out),
                update() moves the requests on once the runner has run the plan
  plan.py       SchedulePlan, what the runner is told (the batch, the KV changes), and StepEvents
  policies.py   who may be admitted (FCFS, a static batch) and who may use a reserved slice
  state.py      SchedulerState, the queues and budget as scheduler plugins see and change them
The KV blocks it decides with are the block manager's (engine/kv/block_manager.py).
"""
