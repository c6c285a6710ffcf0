#!/usr/bin/env bash
# GPU check: `cbtui bench --workload anchor`, then the CUDA tests, recorded budget_sweep runs, a
# short table last.
# The bench's extra rows on CUDA (overlapped steps, no graphs, gather decode) measure the fast-path
# pieces.
# Within 8 minutes on an H100/H200, as issue #6 asks (END=480 s; two minutes spare in the
# device's 10-minute command). Installs nothing: the project runs from this checkout through
# PYTHONPATH on the machine's own PyTorch and transformers; a missing light module is named, and
# installed only with GPU_CHECK_PIP=1 (the device machines reach no package index).
# The goal line is printed as soon as the bench ends, and again in the summary.
#
#   bash scripts/gpu_check.sh            # full anchor workload (512 requests)
#   BENCH_SCALE=0.25 bash scripts/gpu_check.sh   # a quarter of it
#   BENCH_ARGS=--no-ablations bash scripts/gpu_check.sh   # skip the overlapped / no-graphs / gather rows
#
# Results are also written under $OUT (or /tmp/cbtui-gpu-check): pytest log, bench JSON, and a
# step profile when the bench misses its goal with time to spare. A bench cut short by its time
# limit still writes the report of the systems it measured (the table then says INTERRUPTED).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUTDIR=${OUT:-/tmp/cbtui-gpu-check}
mkdir -p "$OUTDIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
TEST_TIMEOUT=${TEST_TIMEOUT:-240}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-300}  # the goal rows come first; the CUDA tests need the rest of the 8 minutes
END=${END:-480}  # every step is done by then (8 minutes): 120 s spare within the device's 10-minute command
# Nothing may wait on a network the device machine does not have (the HF Hub, kernel downloads).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }

stamp "cbtui gpu_check in $PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not found"
"$PY" - <<'PY' || { echo "gpu_check: PyTorch with CUDA is required"; exit 1; }
import torch, sys
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"GPU {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NONE'}")
try:
    import transformers; print(f"transformers {transformers.__version__}")
except ImportError:
    print("transformers: not installed (the HF rows will say so)")
sys.exit(0 if torch.cuda.is_available() else 1)
PY

# Only what is missing; never torch or transformers.
missing=()
for pair in click:click rich:rich pytest:pytest numpy:numpy pynvml:nvidia-ml-py hypothesis:hypothesis sortedcontainers:sortedcontainers attrs:attrs; do
  mod=${pair%%:*}; pkg=${pair#*:}
  "$PY" -c "import $mod" 2>/dev/null || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ] && [ "${GPU_CHECK_PIP:-0}" = 1 ]; then  # opt-in: the device reaches no index
  stamp "installing missing: ${missing[*]}"
  timeout 45 "$PY" -m pip install -q --no-deps --retries 0 --timeout 10 "${missing[@]}" \
    || echo "gpu_check: could not install ${missing[*]} (no package index?); going on without them"
elif [ ${#missing[@]} -gt 0 ]; then
  echo "gpu_check: missing ${missing[*]} (GPU_CHECK_PIP=1 tries pip); going on: the tests that need them skip"
fi

# The bench first: it is what the goal is measured by.
stamp "cbtui bench --workload anchor ${BENCH_SCALE:+--scale $BENCH_SCALE} ${BENCH_ARGS:-}"
# On its time limit the bench gets SIGTERM and still reports the systems it measured (timeout then
# exits 124; the JSON says "interrupted"). --out rewrites the JSON after every system, so even a
# kill after the grace period leaves the rows done.
# shellcheck disable=SC2086 # BENCH_ARGS: extra flags, split on purpose
timeout -k 30 "$BENCH_TIMEOUT" "$PY" -m cbtui bench --workload anchor ${BENCH_SCALE:+--scale "$BENCH_SCALE"} ${BENCH_ARGS:-} \
  --out "$OUTDIR/bench_anchor.json" > "$OUTDIR/bench_table.txt" 2> >(tee "$OUTDIR/bench_anchor.log" >&2)
bench_rc=$?
stamp "bench exit code $bench_rc"
bench_report() { "$PY" -c 'import json, sys; json.load(open(sys.argv[1]))' "$OUTDIR/bench_anchor.json" 2>/dev/null; }
goal() { "$PY" -c 'import json, sys; from cbtui.bench.report import goal_line
print(goal_line(json.load(open(sys.argv[1]))))' "$OUTDIR/bench_anchor.json"; }
bench_report && goal  # at once, in case a later step overruns; the summary repeats it

# The tests take the time the bench left (everything must end within the device's 10-minute
# limit for one command).
test_budget=$((END - SECONDS)); [ "$test_budget" -gt "$TEST_TIMEOUT" ] && test_budget=$TEST_TIMEOUT
if [ "$test_budget" -ge 30 ]; then
  stamp "CUDA tests (tests/test_cuda.py, and the Triton decode kernel compiled), ${test_budget} s at most"
  timeout -k 5 "$test_budget" "$PY" -m pytest -q -rs -s -p no:cacheprovider tests/test_cuda.py tests/test_triton_decode.py \
    2>&1 | tee "$OUTDIR/pytest_cuda.log" | grep --line-buffered -v "^\s*$"
  test_rc=${PIPESTATUS[0]}
else
  echo "no time left for the CUDA tests" > "$OUTDIR/pytest_cuda.log"
  test_rc=124
fi
stamp "CUDA tests exit code $test_rc"

# Recorded GPU runs of budget_sweep (the small preset, each budget), where the latency cost of a
# bigger budget shows: the throughput-vs-latency lesson's figures, replayable anywhere with
# `cbtui replay FILE`. Under $OUTDIR/recorded/; a later session copies them into the repository.
record_rc=skipped
if [ $((END - SECONDS)) -ge 40 ]; then
  stamp "recording budget_sweep on CUDA (small preset), $((END - SECONDS)) s left"
  mkdir -p "$OUTDIR/recorded"
  record_rc=0
  for variant in base budget_16 budget_64 budget_128; do
    [ $((END - SECONDS)) -ge 15 ] || { record_rc=124; break; }
    args=(); [ "$variant" = base ] || args=(--variant "$variant")
    timeout -k 5 $((END - SECONDS < 60 ? END - SECONDS : 60)) "$PY" -m cbtui scenario budget_sweep --model small \
      --device cuda --headless "${args[@]}" --record "$OUTDIR/recorded/budget_sweep_small_cuda_$variant.jsonl" \
      | tail -1 || record_rc=$?
  done
fi
stamp "recordings: $record_rc"

# Where a step's time goes, when the goal was missed and time is left: the whole check has to end
# within the device's 10-minute limit for one command. Tables in $OUTDIR/profile.log.
PROFILE_BY=${PROFILE_BY:-420}  # seconds into the check after which the profile is skipped
goal_met() { goal | grep -q ", met$"; }
profile_rc=skipped
if bench_report && ! goal_met && [ "$SECONDS" -lt "$PROFILE_BY" ]; then
  stamp "goal not met or not measured: profiling steps (scripts/profile_step.py)"
  timeout -k 5 $((END - SECONDS)) "$PY" scripts/profile_step.py > "$OUTDIR/profile.log" 2>&1
  profile_rc=$?
  grep -E "steps|StepRecords|GPU kernel time" "$OUTDIR/profile.log"
fi

echo
echo "== cbtui gpu_check summary: CUDA tests rc=$test_rc, bench rc=$bench_rc, recordings $record_rc, profile $profile_rc =="
grep -E "passed|failed|error" "$OUTDIR/pytest_cuda.log" | tail -1 || echo "CUDA tests: no summary line (cut by the time limit?)"
if bench_report; then  # complete, or cut short by the time limit (its legend then says so)
  "$PY" -m cbtui.bench.report "$OUTDIR/bench_anchor.json"
else
  echo "bench did not finish; per-system lines it printed:"; grep -E "tok/s|unavailable" "$OUTDIR/bench_anchor.log"
fi
[ "$test_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
