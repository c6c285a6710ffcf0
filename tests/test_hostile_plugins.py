"""Plugins that misbehave, and scenario files that name code: safe by construction (issue #14).

A scenario file cannot make cbtui import a module; a plugin that calls sys.exit or raises
KeyboardInterrupt ends the run with one line naming it and its hook; a plugin that raises, returns
nonsense or tries to change a request is disabled, and the requests' outputs stay exact.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import exact_config, run_alone

from engine import AttentionPlugin, CachePlugin, Engine, EngineConfig, SchedulerPlugin, load_plugin
from engine.plugins.base import PluginAbort
from scenarios import ScenarioError, loads

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120  # seconds: every CLI run here ends in a few; a hang fails instead of blocking the suite

# Plugins for the command line (--plugin hostile_plugins:NAME): for each hook, one class that raises
# SystemExit(0) there (Exit_*), one KeyboardInterrupt (Interrupt_*), one KeyError (Broken_*).
HOSTILE = '''
from engine import AttentionPlugin, CachePlugin, SchedulerPlugin

HOOKS = ("__init__", "check_config", "attach", "describe", "before_step", "after_step",
         "on_request_completion", "wrap", "attention", "before_append")


def make(hook, error):
    def hit(where):
        if where == hook:
            raise error

    class Hostile(SchedulerPlugin, AttentionPlugin, CachePlugin):
        name = "hostile_" + hook.strip("_")

        def __init__(self):
            hit("__init__")

        def check_config(self, config):
            hit("check_config")

        def attach(self, cache):
            hit("attach")

        def describe(self):
            hit("describe")
            return self.name

        def before_step(self, state):
            hit("before_step")

        def after_step(self, state, record):
            hit("after_step")

        def on_request_completion(self, request):
            hit("on_request_completion")

        def wrap(self, layer, attention):
            hit("wrap")

            def wrapped(q, k, v, batch):
                hit("attention")
                return attention(q, k, v, batch)
            return wrapped

        def before_append(self, cache, layer, batch, k, v):
            hit("before_append")
            return k, v
    return Hostile


for _hook in HOOKS:
    globals()["Exit_" + _hook.strip("_")] = make(_hook, SystemExit(0))
    globals()["Interrupt_" + _hook.strip("_")] = make(_hook, KeyboardInterrupt())
    globals()["Broken_" + _hook.strip("_")] = make(_hook, KeyError("boom"))
'''
HOOKS = ("__init__", "check_config", "attach", "describe", "before_step", "after_step",
         "on_request_completion", "wrap", "attention", "before_append")

SMALL = '''
title = "small"
[engine]
model = "tiny"
device = "cpu"
kv_layout = "paged"
max_tokens_per_step = 8
[[requests]]
prompt_tokens = [1, 2, 3, 4, 5]
max_new_tokens = 4
[[requests]]
prompt_tokens = [6, 7, 8]
max_new_tokens = 4
arrival_step = 1
'''

WORKLOAD = [{"prompt": [3 + i] * (4 + 3 * i), "max_new_tokens": 3 + i, "arrival_step": i} for i in range(4)]


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hostile")
    (path / "hostile_plugins.py").write_text(HOSTILE)
    (path / "small.toml").write_text(SMALL)
    return path


@pytest.fixture
def hostile(plugin_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_dir))
    return lambda name: load_plugin(f"hostile_plugins:{name}")


def cli(*args, pythonpath: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(pythonpath)]))
    return subprocess.run([sys.executable, "-m", "cbtui", "scenario", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)


def assert_one_line_error(res: subprocess.CompletedProcess, code: int, *words: str) -> str:
    assert res.returncode == code, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cbtui: error: "), res.stderr[-2000:]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def run(plugins, workload=WORKLOAD, **config):
    eng = Engine(exact_config(max_tokens_per_step=8, prefill_chunk_size=4, **config), plugins=plugins)
    ids = [eng.add_request(**w) for w in workload]
    records = []
    while eng.has_unfinished():
        records.append(eng.step())
        assert len(records) < 500, "the run did not end"
    return [eng.requests[i].output for i in ids], records, eng


def assert_exact_and_disabled(plugin, hook: str, **config):
    outputs, records, eng = run([plugin], **config)
    for spec, out in zip(WORKLOAD, outputs, strict=True):
        assert out == run_alone(spec["prompt"], spec["max_new_tokens"])
    errors = [e for r in records for e in r.errors]
    assert len(errors) == 1 and errors[0].startswith(f"plugin {plugin.name} disabled: {hook} raised "), errors
    assert id(plugin) in eng.plugins.disabled
    return errors[0]


# -- 1. a scenario file does not run code ------------------------------------------------------------
HELPER = '''
import os
open(os.environ["MARKER"], "w").write("imported")

from engine import SchedulerPlugin


class Helper(SchedulerPlugin):
    name = "helper"
'''


@pytest.fixture
def lesson(tmp_path) -> Path:
    """A lesson.toml that names homework_helper:Helper, a module beside it that leaves a marker when imported."""
    (tmp_path / "homework_helper.py").write_text(HELPER)
    lesson = tmp_path / "lesson.toml"
    lesson.write_text(SMALL + '[[plugins]]\nname = "homework_helper:Helper"\n')
    return lesson


def test_a_scenario_file_naming_a_module_is_refused_without_importing_it(lesson):
    marker = lesson.parent / "marker"
    env_marker = {"MARKER": str(marker)}
    res = subprocess.run([sys.executable, "-m", "cbtui", "scenario", str(lesson), "--headless"], cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(lesson.parent)]),
                                  **env_marker),
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert_one_line_error(res, 2, str(lesson), "homework_helper:Helper", "--trust-plugins")
    assert not marker.exists()


@pytest.mark.slow
def test_trust_plugins_or_the_command_line_lets_module_plugins_load(lesson):
    marker = lesson.parent / "marker"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(lesson.parent)]), MARKER=str(marker))
    res = subprocess.run([sys.executable, "-m", "cbtui", "scenario", str(lesson), "--headless", "--trust-plugins",
                          "--steps", "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert marker.exists() and "helper" in res.stdout


def test_loading_a_scenario_imports_nothing_it_names(capsys):
    text = SMALL + '[[plugins]]\nname = "this:Nothing"\n'
    with pytest.raises(ScenarioError, match="pass --trust-plugins if you trust this file"):
        loads(text, "lesson.toml")
    assert "Beautiful is better than ugly" not in capsys.readouterr().out  # `import this` prints the Zen
    scenario = loads(SMALL + '[[plugins]]\nname = "engine.plugins.builtin:PriorityPlugin"\n', "mine.toml",
                     trust_plugins=True)
    assert scenario.make_plugins()[0].name == "priority"
    # A Scenario built without trust (or edited after) refuses again when it makes its plugins.
    scenario.trust_plugins = False
    with pytest.raises(ScenarioError, match="--trust-plugins"):
        scenario.make_plugins()
    assert loads(SMALL + '[[plugins]]\nname = "priority"\n').make_plugins()[0].name == "priority"


# -- 2. SystemExit and KeyboardInterrupt end the run with one line ----------------------------------
@pytest.mark.parametrize("kind, code, raised", [("Exit", 2, "SystemExit: 0"), ("Interrupt", 130, "KeyboardInterrupt")])
@pytest.mark.parametrize("hook", HOOKS)
def test_exit_or_interrupt_in_any_hook_ends_the_run_naming_plugin_and_hook(hostile, hook, kind, code, raised):
    name = f"{kind}_{hook.strip('_')}"
    with pytest.raises(PluginAbort) as err:
        run([hostile(name)], kv_layout="paged")
    who = f"hostile_plugins:{name}" if hook == "__init__" else f"hostile_{hook.strip('_')}"
    assert str(err.value) == f"plugin {who} stopped the run: {hook} raised {raised}"
    assert err.value.exit_code == code


@pytest.mark.slow
@pytest.mark.parametrize("plugin, code, words", [
    ("Exit_before_step", 2, "plugin hostile_before_step stopped the run: before_step raised SystemExit: 0"),
    ("Interrupt_after_step", 130, "plugin hostile_after_step stopped the run: after_step raised KeyboardInterrupt"),
    ("Exit_init", 2, "plugin hostile_plugins:Exit_init stopped the run: __init__ raised SystemExit: 0"),
    ("Broken_check_config", 2, "plugin hostile_check_config: check_config raised KeyError: 'boom'"),
    ("Broken_attach", 2, "plugin hostile_attach: attach raised KeyError: 'boom'"),
])
def test_cli_turns_plugin_exits_and_failures_into_one_line(plugin_dir, plugin, code, words):
    res = cli(plugin_dir / "small.toml", "--json", "--plugin", f"hostile_plugins:{plugin}", pythonpath=plugin_dir)
    assert_one_line_error(res, code, words)
    if plugin == "Exit_before_step":  # the records stop where the run stopped, and stderr says why
        assert len(res.stdout.splitlines()) == 1  # the run header only: step 0 never completed


# -- 3. isolation: every entry point guarded --------------------------------------------------------
@pytest.mark.parametrize("hook", ["__init__", "check_config", "attach"])
def test_a_plugin_that_cannot_start_is_a_one_line_value_error(hostile, hook):
    with pytest.raises(ValueError) as err:
        run([hostile(f"Broken_{hook.strip('_')}")], kv_layout="paged")
    assert "KeyError: 'boom'" in str(err.value) and "\n" not in str(err.value)


def test_describe_that_raises_or_returns_no_string_disables_the_plugin(hostile):
    assert_exact_and_disabled(hostile("Broken_describe"), "describe")

    class Mute(SchedulerPlugin):
        name = "mute"

        def describe(self):
            return None

    assert "describe returned NoneType, not a string" in assert_exact_and_disabled(Mute(), "describe")


class BadKey(SchedulerPlugin):
    name = "bad_key"

    def __init__(self, key):
        self.key = key

    def before_step(self, state):
        state.decode_key = self.key


@pytest.mark.parametrize("key, words", [
    (lambda r: 1 // 0, "ZeroDivisionError"),
    (lambda r: object(), "TypeError: '<' not supported"),
    (lambda r: "a" if r.id % 2 else 1, "TypeError: '<' not supported"),
])
def test_a_decode_key_that_raises_or_cannot_be_compared_disables_the_plugin(key, words):
    assert words in assert_exact_and_disabled(BadKey(key), "decode_key")


def test_a_decode_key_is_taken_once_per_step():
    calls = []

    class Flaky(SchedulerPlugin):
        name = "flaky"

        def before_step(self, state):
            def key(r):  # fine while the host takes the order, wrong if called again later
                calls.append(r.id)
                if len(calls) > len(state.running):
                    raise RuntimeError("called twice")
                return -r.id
            calls.clear()
            state.decode_key = key

    outputs, records, _ = run([Flaky()])
    assert not [e for r in records for e in r.errors]
    assert outputs == [run_alone(w["prompt"], w["max_new_tokens"]) for w in WORKLOAD]


class WrongCache(CachePlugin):
    name = "wrong_cache"

    def __init__(self, change):
        self.change = change

    def before_append(self, cache, layer, batch, k, v):
        return self.change(k), v


@pytest.mark.parametrize("change, words", [
    (lambda k: k.float(), "torch.float32"),
    (lambda k: torch.empty_like(k, device="meta"), "on meta"),
    (lambda k: k.tolist(), "a list, not a tensor"),
])
def test_a_cache_plugin_returning_the_wrong_dtype_device_or_type_is_disabled(change, words):
    message = assert_exact_and_disabled(WrongCache(change), "before_append", kv_layout="paged")
    assert words in message


class WrongAttention(AttentionPlugin):
    name = "wrong_attention"

    def __init__(self, change):
        self.change = change

    def wrap(self, layer, attention):
        return lambda q, k, v, batch: self.change(attention(q, k, v, batch))


@pytest.mark.parametrize("change, words", [
    (lambda out: torch.empty_like(out, device="meta"), "on meta"),
    (lambda out: out.float(), "torch.float32"),
    (lambda out: "nope", "a str, not a tensor"),
])
def test_an_attention_plugin_returning_meta_tensors_or_the_wrong_dtype_is_disabled(change, words):
    assert words in assert_exact_and_disabled(WrongAttention(change), "attention")


class Corrupter(SchedulerPlugin):
    """Tries to change the requests it is shown."""

    name = "corrupter"

    def __init__(self, how):
        self.how = how

    def before_step(self, state):
        if self.how == "queues" and state.running:
            state.waiting = None
        if self.how == "iterator" and state.running:  # same requests, but gone once read
            state.running = iter(list(state.running))
        if self.how == "exit" and state.running:  # half a change, then an exit: the queues stay whole
            state.running.clear()
            raise SystemExit(3)
        for r in state.running:
            if self.how == "append" and r.output:
                r.output.append(7)
            if self.how == "rewind":
                r.num_computed = 0

    def on_request_completion(self, request):
        if self.how == "completion":
            del request.output


@pytest.mark.parametrize("how, hook, words", [
    ("append", "before_step", "'tuple' object has no attribute 'append'"),
    ("rewind", "before_step", "requests are read-only to plugins (setting 'num_computed')"),
    ("queues", "before_step", "queues replaced"),
    ("iterator", "before_step", "queues replaced"),
    ("completion", "on_request_completion", "requests are read-only to plugins (deleting 'output')"),
])
def test_a_plugin_cannot_change_requests(how, hook, words):
    assert words in assert_exact_and_disabled(Corrupter(how), hook)


def test_an_exit_after_a_half_done_change_leaves_the_queues_whole():
    eng = Engine(exact_config(), plugins=[Corrupter("exit")])
    eng.add_request([1, 2, 3], max_new_tokens=3)
    with pytest.raises(PluginAbort, match="plugin corrupter stopped the run: before_step raised SystemExit: 3"):
        while eng.has_unfinished():
            eng.step()
    assert [r.id for r in eng.scheduler.running] == [0]


def test_views_read_like_requests():
    seen = []

    class Reader(SchedulerPlugin):
        name = "reader"

        def before_step(self, state):
            seen.extend((r.id, r.prompt, r.output, r.num_tokens, r.remaining, r.is_decoding, r.phase(),
                         r.token_slice(0, 2)) for r in state.running)

    run([Reader()])
    assert seen and all(isinstance(prompt, tuple) and isinstance(out, tuple) for _, prompt, out, *_ in seen)


@pytest.mark.slow
def test_priority_reserving_the_whole_budget_ends_instead_of_looping(tmp_path):
    # The high-priority request cannot get KV blocks while the low one holds them, and the low one
    # gets no budget: before, the run stepped for ever, printing "no progress".
    toml = tmp_path / "hog.toml"
    toml.write_text('''
title = "hog"
[engine]
model = "tiny"
device = "cpu"
max_tokens_per_step = 16
kv_layout = "paged"
block_size = 4
num_blocks = 6
[[requests]]
prompt_tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
max_new_tokens = 6
[[requests]]
prompt_tokens = [1, 2, 3, 4, 5, 6, 7, 8]
max_new_tokens = 3
priority = 1
arrival_step = 2
[[plugins]]
name = "priority"
options = { reserve_tokens = 16 }
''')
    res = cli(toml, "--headless", pythonpath=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    # The scheduler lifts a slice its holders cannot use for such a step: the plugin keeps working.
    assert "summary:" in res.stdout and "no progress" not in res.stdout and "disabled" not in res.stdout


def test_runs_without_plugins_take_no_plugin_path():
    eng = Engine(EngineConfig(model="tiny", device="cpu"))
    state = eng.scheduler.state(0)
    waiting, running = state.waiting, state.running
    eng.plugins.before_step(state)
    assert state.waiting is waiting and state.running is running  # the live queues, no views
