"""Project rules that are easy to break silently."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_engine_imports_no_ui():
    code = ("import sys, engine; print(json.dumps(sorted(m for m in sys.modules"
            " if m.split('.')[0] in ('textual', 'rich', 'cbtui', 'click'))))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert json.loads(out.stdout) == []


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    run_cmd = next(b for b in blocks if "cbtui scenario mixed_load" in b)
    test_cmd = next(b for b in blocks if "pytest" in b)
    assert run_cmd.strip().endswith("cbtui scenario mixed_load")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd.strip() in [line.strip() for line in ci]


def test_tests_import_their_helpers_one_way():
    """tests/ is on the path (pyproject's pythonpath), so helpers are imported as `helpers`: one imported
    as `tests.helpers` too would be a second copy of the module, with its own globals and classes."""
    import ast

    found = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found += [f"{path.name}: {name}" for name in names if name.split(".")[0] == "tests"]
    assert found == []


# Python source that makes importing textual fail, as on the GPU machine (no textual there).
NO_TEXTUAL = ("import importlib, importlib.abc, sys\n"
              "class NoTextual(importlib.abc.MetaPathFinder):\n"
              "    def find_spec(self, name, path=None, target=None):\n"
              "        if name.split('.')[0] == 'textual':\n"
              "            raise ImportError('textual is not installed here')\n"
              "sys.meta_path.insert(0, NoTextual())\n")


def test_what_the_gpu_check_runs_needs_no_textual():
    """The GPU machine has no textual and reaches no package index: the bench, the CUDA tests and
    everything they import (their lazy imports inside test functions too) must work without it."""
    import ast

    modules = {"cbtui.cli", "cbtui.bench.run", "cbtui.bench.report", "cbtui.bench.hf_systems", "scripts.profile_step"}
    for test_file in ("tests/test_cuda.py", "tests/test_triton_decode.py", "tests/conftest.py", "tests/helpers.py"):
        for node in ast.walk(ast.parse((ROOT / test_file).read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module)
            elif isinstance(node, ast.Import):
                modules.update(alias.name for alias in node.names)
    ours = sorted(m for m in modules if m.split(".")[0] in ("cbtui", "engine", "scenarios", "helpers", "scripts"))
    assert "cbtui.bench.ours" in ours  # the lazy import inside a test function was found
    code = NO_TEXTUAL + f"for m in {ours!r}:\n    importlib.import_module(m)\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**__import__("os").environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"})
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_metrics_pass_mypy():
    """engine.records.metrics type-checks under the project's mypy settings. Request ids are ints in
    the records but strings as JSON map keys (sampled, block tables): a loop that took a str key and
    then an int id in one variable (MetricsCollector.observe) was a str/int mix-up to mypy.
    (scripts/lint.sh checks the whole engine; this keeps the collector clean even without it.)"""
    pytest.importorskip("mypy")
    done = subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent", "--cache-dir", os.devnull,
                           "engine/records/metrics.py"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_widget_contract_names_every_engine_module_but_records():
    """import-linter cannot forbid "engine.* except engine.records", so the widgets' contract lists
    the engine's modules: a new one must be added there too."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contract = next(c for c in config["contracts"] if c.get("source_modules") == ["cbtui.widgets"])
    modules = {f"engine.{p.stem if p.is_file() else p.name}" for p in (ROOT / "engine").iterdir()
               if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert set(contract["forbidden_modules"]) == modules - {"engine.records"}


@pytest.mark.slow
def test_the_gpu_checks_recording_runs_without_textual(tmp_path):
    """scripts/gpu_check.sh records budget_sweep headless on the GPU machine, which has no textual:
    the same command (on the CPU, three steps) writes a header and a record a step without it."""
    script = (ROOT / "scripts" / "gpu_check.sh").read_text()
    assert "scenario budget_sweep --model small" in script and "--headless" in script and "--record" in script
    out = tmp_path / "run.jsonl"
    code = (NO_TEXTUAL + "from cbtui.cli import main\n"
            f"main(['scenario', 'budget_sweep', '--device', 'cpu', '--headless', '--variant', 'budget_16', '--steps', "
            f"'3', '--record', {str(out)!r}])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = out.read_text().splitlines()
    assert len(lines) == 4 and '"variant": "budget_16"' in lines[0]


def test_the_scheduler_tests_run_where_torch_cannot_be_imported():
    """The scheduler and its block manager are plain Python: their tests pass in a process where
    `import torch` fails (and without conftest.py, which sets torch's threads)."""
    files = ["tests/test_scheduler.py", "tests/test_block_manager.py", "tests/test_policies.py"]
    code = ("import sys; sys.modules['torch'] = None\n"  # `import torch` raises ImportError
            "import pytest\n"
            f"sys.exit(pytest.main(['-q', '--noconftest', '-p', 'no:cacheprovider', *{files!r}]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert re.search(r"\b\d+ passed", done.stdout) and "failed" not in done.stdout
