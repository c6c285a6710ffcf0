"""Project rules that are easy to break silently."""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_engine_imports_no_ui():
    code = "import sys, engine; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich', 'cbtui', 'click'))))"
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
