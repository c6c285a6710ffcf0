"""Times N chat prompts rendered through a model's chat template: the renderer child kept across renders
(engine/models/chat_template.py) against a child spawned per render (that file at a git revision),
interleaved in one process. Needs the model pulled (`cbtui pull smollm2`).

    PYTHONPATH=$PWD python scripts/bench_chat_render.py --model smollm2 --old-rev 36f3307 --prompts 64 --reps 3
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.models import chat_template
from engine.models.source import tokenizer_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--old-rev", required=True, help="a git revision whose chat_template.py spawns per render")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    old_source = subprocess.run(["git", "show", f"{args.old_rev}:engine/models/chat_template.py"], check=True,
                                capture_output=True, text=True).stdout
    old_file = Path(tempfile.mkdtemp()) / "chat_template_spawn_per_render.py"
    old_file.write_text(old_source)
    spec = importlib.util.spec_from_file_location("chat_template_spawn_per_render", old_file)
    assert spec is not None and spec.loader is not None
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)

    tokenizer = tokenizer_for(args.model)
    template = tokenizer.chat_template()
    config = tokenizer._config()
    special = {key: config.get(key) if isinstance(config.get(key), str) else None
               for key in ("bos_token", "eos_token", "unk_token", "pad_token")}
    prompts = [[{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}] for i in range(args.prompts)]
    times: dict[str, list[float]] = {"spawn per render": [], "kept child": []}
    texts: dict[str, list[str]] = {}
    for rep in range(args.reps):
        for name, module in (("spawn per render", old), ("kept child", chat_template))[:: 1 if rep % 2 else -1]:
            if module is chat_template:
                chat_template.close()  # each repetition pays the kept child's start once
            start = time.perf_counter()
            texts[name] = [module.render(template, p, add_generation_prompt=True, **special) for p in prompts]
            times[name].append(time.perf_counter() - start)
        assert texts["kept child"] == texts["spawn per render"], "the two renderers made different prompts"
    base = min(times["spawn per render"])
    for name, seconds in times.items():
        print(f"{name:>17}: {args.prompts} renders in " + ", ".join(f"{s:.3f}" for s in seconds)
              + f" s (best {min(seconds):.3f} s, {min(seconds) / args.prompts * 1e3:.2f} ms/render, "
              f"{base / min(seconds):.1f}x the spawn per render)")
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), file=sys.stderr)


if __name__ == "__main__":
    main()
