"""Loads a scenario (a built-in name or a path to a TOML file), validates it, and builds its engine.

File format (every key but the workload is optional; see the built-in files for examples):

    title, summary, description, question   strings: what it is, one line for listings,
                                            what to look for, the seed question it shows
    seed                                    integer: seeds the workload, so runs are identical
    [engine]                                any EngineConfig setting by its flat name (see
                                            EngineConfig.field_names()); model is a preset or a local
                                            Hugging Face checkpoint directory (relative to the file)
    [engine.SECTION]                        or a section's fields by their own names: [engine.cache]
                                            kv_layout = "dense" (sections: llm, scheduler, cache,
                                            runner, speculation, parallel)
    [[requests]]                            explicit requests (see workload.REQUEST_KEYS)
    [[generators]]                          seeded request generators (see workload.GENERATOR_KEYS)
    [compare.NAME]                          engine overrides (flat, or [compare.NAME.SECTION])
                                            for a variant that headless runs
                                            compare against the scenario as written; its key
                                            `plugins` (a list of NAME or NAME:key=value specs,
                                            [] for none) replaces [[plugins]] in that variant
    [[plugins]]                             name (a built-in plugin or an installed cbtui.plugins
                                            entry point; module:Class only with trust_plugins,
                                            i.e. `cbtui scenario --trust-plugins`) and options

A scenario file is data: loading one never imports code it names unless the caller trusts it.
"""

from __future__ import annotations

import difflib
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

from engine import Engine, EngineConfig
from engine.config import MAX_POOL_TOKENS, MODELS, SECTIONS, default_of, section_fields, setting_for
from engine.live_changes import changed_config
from engine.models.checkpoint import CheckpointError
from engine.models.packaged import is_packaged
from engine.models.source import is_hub_name, is_preset, model_spec
from engine.plugins.base import check_plugin_config
from engine.plugins.loader import is_module_spec, load_plugin
from engine.plugins.spec import parse_plugin_spec
from engine.records import RunHeader

from .errors import ScenarioError
from .schema import Checker, show, toml_key, toml_type
from .workload import MAX_REQUESTS, MAX_SEED, generate, parse_request, prompt_size

BUILTIN_DIR = Path(__file__).parent
TOP_KEYS = ("title", "summary", "description", "question", "seed", "engine", "requests", "generators",
            "compare", "plugins", "changes")
PLUGIN_KEYS = ("name", "options")
# [engine] keys: every EngineConfig flat name, or a section's name for a sub-table ([engine.cache]).
# What each accepts (choices, ranges, and the stricter `limit` a file may ask for) is the setting's
# metadata in engine/config; the loader reads it, and adds only what depends on the model.
ENGINE_KEYS = tuple(EngineConfig.field_names())
MODEL_BOUNDS = {"block_size": lambda spec: spec.max_context, "eos_token_id": lambda spec: spec.vocab_size - 1}
MAX_VARIANTS = 8
SUMMARY_WIDTH = 72


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.toml"))


@dataclass
class Scenario:
    name: str
    path: Path
    title: str
    description: str
    question: str
    engine: dict = field(default_factory=dict)
    requests: list[dict] = field(default_factory=list)  # keyword arguments of Engine.add_request
    summary: str = ""  # one line for `cbtui scenarios`
    seed: int = 0  # the workload seed
    variants: dict[str, dict] = field(default_factory=dict)  # [compare] name -> engine overrides
    plugins: list[dict] = field(default_factory=list)  # [[plugins]]: {"name": spec, "options": {...}}
    variant_plugins: dict[str, list[dict]] = field(default_factory=dict)  # [compare.NAME] plugins, if given
    trust_plugins: bool = False  # whether the file's [[plugins]] may name module:Class (code to import)
    # [[changes]] (and --at STEP:KEY=VALUE): live settings turned at a step, (step, {name: value})
    changes: list[tuple[int, dict]] = field(default_factory=list)

    def make_plugins(self, extra: tuple[str, ...] = (), variant: str | None = None) -> list:
        """Fresh plugin instances (they keep state) for the file's [[plugins]] (or the variant's own
        list) plus `extra` specs (the command line's, which may name module:Class: the user typed them)."""
        made = []
        for i, spec in enumerate(self.variant_plugins.get(variant, self.plugins) if variant else self.plugins):
            if not self.trust_plugins:
                _refuse_module_spec(self.path, i, spec["name"])
            try:
                made.append(load_plugin(spec["name"], spec["options"]))
            except ValueError as exc:
                raise ScenarioError(f"{self.path}: [[plugins]] {exc}") from None
        for typed in extra:
            try:
                made.append(load_plugin(*parse_plugin_spec(typed)))
            except ValueError as exc:
                raise ScenarioError(f"--plugin {typed}: {exc}") from None
        return made

    def engine_config(self, variant: str | None = None, **overrides) -> EngineConfig:
        """The scenario's settings, then non-None overrides (the CLI's), then the variant's."""
        settings = dict(self.engine)
        settings.update({k: v for k, v in overrides.items() if v is not None})
        if variant is not None:
            if variant not in self.variants:
                known = ", ".join(self.variants) or "none"
                raise ScenarioError(f"{self.path}: no variant {variant!r} in [compare]; variants: {known}")
            settings.update(self.variants[variant])
        try:
            return EngineConfig(**settings)
        except CheckpointError as exc:  # names the checkpoint's file itself
            raise ScenarioError(str(exc)) from None
        except (TypeError, ValueError) as exc:
            raise ScenarioError(self._where(str(exc), variant, overrides)) from None

    def _where(self, message: str, variant: str | None, overrides: dict) -> str:
        """The message, prefixed with where the setting it names ("device='cuda' ...") came from:
        the variant, a command-line flag, or the file's [engine] table (in that order of precedence)."""
        if message.startswith("plugin "):  # a plugin refused the configuration or failed to attach
            return f"{self.path}: {message}"
        key = message.split("=", 1)[0]
        if variant is not None and key in self.variants.get(variant, {}):
            return f"{self.path}: [compare] {variant}: {message}"
        if overrides.get(key) is not None:  # the flag as cbtui/engine_options names it
            flag = setting_for(key).flag or f"--{key.replace('_', '-')}"
            return f"{flag}: {message}" if isinstance(overrides[key], bool) else f"{flag} {overrides[key]}: {message}"
        return f"{self.path}: [engine] {message}"

    def build_engine(self, variant: str | None = None, plugins: tuple[str, ...] = (), **overrides) -> Engine:
        """The engine with the workload queued; `plugins` adds plugin specs (the CLI's --plugin)."""
        config = self.engine_config(variant, **overrides)
        made = self.make_plugins(plugins, variant)
        try:
            engine = Engine(config, plugins=made)
        except CheckpointError as exc:  # names the checkpoint's file (and tensor) itself
            raise ScenarioError(str(exc)) from None
        except ValueError as exc:  # e.g. device='cuda' without a GPU, flex attention on the CPU
            raise ScenarioError(self._where(str(exc), variant, overrides)) from None
        except (RuntimeError, MemoryError) as exc:  # allocating the model or the KV pool failed
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ScenarioError(f"{self.path}: [engine] could not build the engine ({first}); "
                                f"lower num_blocks or use a smaller model") from None
        for i, spec in enumerate(self.requests):
            try:
                engine.add_request(**self._encoded(engine, spec))
            except ValueError as exc:
                engine.close()
                raise ScenarioError(f"{self.path}: request #{i + 1} of the workload: {exc}") from None
        for step, settings in self.changes:
            try:
                engine.reconfigure(at_step=step, **settings)
            except ValueError as exc:
                engine.close()
                raise ScenarioError(f"{self.path}: the change at step {step}: {exc}") from None
        return engine

    def _encoded(self, engine: Engine, spec: dict) -> dict:
        """A request's keywords for add_request: a text prompt is encoded by the engine's tokenizer
        (bytes for a preset, the model's own), a chat prompt through the model's chat template. The
        random presets have no chat template: their chat prompt is its text, as bytes, so a chat
        scenario runs on them too (its outputs are noise either way)."""
        if not spec.get("chat"):
            return spec
        spec = {k: v for k, v in spec.items() if k != "chat"}
        chat_prompt = getattr(engine.tokenizer, "chat_prompt", None)
        if chat_prompt is not None:
            spec["prompt"] = chat_prompt(spec["prompt"])
        return spec

    def header(self, engine: Engine, variant: str | None = None) -> RunHeader:
        """The run header a stream of this scenario's records starts with."""
        title = self.title + (f" (variant {variant})" if variant else "")
        return engine.header(title=title, description=self.description, question=self.question, variant=variant)


def _refuse_module_spec(path: Path, index: int, name: str) -> None:
    if is_module_spec(name):
        raise ScenarioError(f"{path}: [[plugins]] #{index + 1} name {name!r} would import and run Python code "
                            f"named by the file; a scenario file may name only built-in plugins and installed "
                            f"cbtui.plugins entry points; pass --trust-plugins if you trust this file")


def load_scenario(name_or_path: str, trust_plugins: bool = False, model: str | None = None) -> Scenario:
    """A built-in name (see builtin_names) or a path to a TOML file. Its [[plugins]] may name
    module:Class only with `trust_plugins` (the file would otherwise run code when validated).
    `model` (the command line's --model) is the model that will run: the workload is checked against
    it (token ids against its vocabulary, lengths against its context), not the file's own."""
    path = _resolve(str(name_or_path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    return loads(text, path, trust_plugins, model)


def loads(text: str, path: Path | str = "<string>", trust_plugins: bool = False,
          model: str | None = None) -> Scenario:
    """Parses and validates scenario TOML text; `path` names the file in error messages; `model`
    as in load_scenario."""
    path = Path(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: invalid TOML: {exc}") from None
    except ValueError:  # Python's own limit on int(): more than 4300 digits
        raise ScenarioError(f"{path}: {_huge_number(text)}a number of more than {sys.get_int_max_str_digits()} "
                            f"digits; no setting needs one: write a smaller value") from None
    return from_dict(data, path, trust_plugins, model)


def _huge_number(text: str) -> str:
    """'line N: ' for the line that holds the longest run of digits ('' if none is found)."""
    runs = [(len(m.group()), m.start()) for m in re.finditer(r"[0-9_]{100,}", text)]
    return f"line {text.count(chr(10), 0, max(runs)[1]) + 1}: " if runs else ""


def _resolve(name: str) -> Path:
    if name in builtin_names():
        return BUILTIN_DIR / f"{name}.toml"
    path = Path(name)
    if path.is_dir():
        raise ScenarioError(f"{path}: is a directory; give a scenario .toml file")
    if path.is_file():
        return path
    if path.suffix == ".toml" or "/" in name:
        raise ScenarioError(f"{path}: no such scenario file")
    close = difflib.get_close_matches(name, builtin_names(), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ScenarioError(f"unknown scenario {name!r}; {hint}built-in scenarios: {', '.join(builtin_names())} "
                        f"(or give a path to a .toml file)")


def _flat_engine(check: Checker, table: dict, name: str) -> dict:
    """An [engine] table (or a [compare.NAME] one, `name` naming it) as flat keys: a sub-table such as
    [engine.cache] gives its section's fields by their flat names. Each setting may be given once."""
    flat, nested = {}, {}
    for key, value in table.items():
        if key in SECTIONS:
            sub = check.table(value, key)
            names = section_fields(key)
            check.at(f"[{name}.{key}] ").keys(sub, names)
            nested.update({names[own]: (key, own, v) for own, v in sub.items()})
        else:
            flat[key] = value
    check.keys(flat, ENGINE_KEYS + tuple(SECTIONS))
    for key, (section, own, value) in nested.items():
        if key in flat:
            check.fail(key, f"is given twice, here and as {own} in [{name}.{section}]; keep one")
        flat[key] = value
    return flat


def _check_engine(check: Checker, settings: dict, model: str | None = None) -> EngineConfig:
    """Flat keys checked by their settings' metadata (choices, types, ranges, with the stricter limits
    a file may ask for, and the model's own bounds), then EngineConfig. `model`: the command line's
    --model, which runs instead of the file's (whose setting is then only normalised, not loaded)."""
    if settings.get("overlap_steps"):
        check.fail("overlap_steps", "a scenario shows every step as it runs; overlapped steps (records one step "
                                    "late) are for throughput runs such as cbtui bench: remove the key")
    for key in settings:  # checked here too, for the 'did you mean'
        s = setting_for(key)
        if s.choices and not s.open_choice:
            check.choice(settings, key, None, s.choices)
    file_model = _model_setting(check, settings)
    spec = _model_spec(check, file_model) if model is None else _model_spec(None, model)
    for key in settings:
        s = setting_for(key)
        if key in MODEL_BOUNDS:
            check.check_int(settings[key], key, int(s.low or 0), MODEL_BOUNDS[key](spec))
        elif s.type is int and (s.limit or s.high) is not None:
            check.check_int(settings[key], key, int(s.low or 0), int(s.limit or s.high or 0))
        elif s.type is float:
            check.number(settings, key, 0.0, s.low or 0.0, s.high if s.high is not None else float("inf"))
        elif s.type is bool:
            check.boolean(settings, key, False)
    try:
        config = EngineConfig(**settings) if model is None else EngineConfig(**{**settings, "model": model})
    except CheckpointError as exc:  # names the model's path itself
        raise ScenarioError(str(exc)) from None
    except ValueError as exc:  # anything EngineConfig checks that the lines above do not
        raise ScenarioError(f"{check.file}: {check.where}{exc}") from None
    cache = config.cache
    if cache.num_blocks is not None and cache.num_blocks * cache.block_size > MAX_POOL_TOKENS:
        check.fail("num_blocks", f"num_blocks * block_size = {cache.num_blocks * cache.block_size} tokens; "
                                 f"a scenario's pool may hold at most {MAX_POOL_TOKENS}")
    return config


def _model_setting(check: Checker, settings: dict) -> str:
    """The file's model: a preset, a packaged model (smollm2), a Hub name (ORG/NAME[@REV]), or a
    checkpoint directory or GGUF file, relative to the scenario file (settings["model"] becomes its path)."""
    model = settings.get("model", default_of("model"))
    if not isinstance(model, str):
        check.choice(settings, "model", None, MODELS)
    if is_preset(model) or is_packaged(model):
        return model
    path = Path(model).expanduser()
    if not path.is_absolute() and check.file != "<string>":
        path = Path(check.file).parent / path
    if not path.exists() and is_hub_name(model):
        return model
    if not path.exists() and "/" not in model:  # a typo of a preset name: 'did you mean'
        close = difflib.get_close_matches(model, MODELS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        check.fail("model", f"{show(model)} is neither a preset{hint} nor a checkpoint directory next to the "
                            f"scenario file; give a preset ({', '.join(MODELS)}) or the directory's path")
    settings["model"] = model = str(path)
    return model


def _model_spec(check: Checker | None, model: str):
    """The model's spec (a real model's from its config.json); `check` None: the command line's --model,
    whose errors name its path themselves."""
    try:
        return model_spec(model)
    except CheckpointError as exc:
        if check is None:
            raise ScenarioError(str(exc)) from None
        check.fail("model", str(exc))


def _block_need(config: EngineConfig):
    """A function: total tokens of one request -> a problem string if it can never fit the pool."""
    cache, parallel = config.cache, config.parallel

    def need(total: int) -> str | None:
        if cache.kv_layout != "paged" or cache.num_blocks is None:
            # Dense grows on demand; the default pool holds eight full contexts; a kv_memory_bytes
            # pool's block count depends on the dtype (the engine checks each request against it).
            return None
        blocks = -(-total // cache.block_size)
        if parallel is not None and parallel.shard_by == "sequence":  # its blocks are dealt over the shards
            blocks = -(-blocks // parallel.shards)
        if blocks > cache.num_blocks:
            return (f"a request of {total} tokens needs {blocks} KV blocks of {cache.block_size}, but "
                    f"num_blocks = {cache.num_blocks}; raise num_blocks or shorten the request")
        return None
    return need


def from_dict(data: dict, path: Path, trust_plugins: bool = False, model: str | None = None) -> Scenario:
    """Validates parsed TOML and builds the Scenario (workload generated, seeded). A [[plugins]]
    name that is module:Class is refused, before anything is imported, unless `trust_plugins`.
    `model` (the command line's --model) runs instead of the file's [engine] model, so the workload
    is checked against it; a [compare] variant that names its own model keeps it."""
    check = Checker(str(path))
    check.keys(data, TOP_KEYS)
    title = check.string(data, "title", path.stem, max_len=200)
    description = check.string(data, "description", "")
    question = check.string(data, "question", "", max_len=500)
    summary = check.string(data, "summary", _first_line(description), max_len=200)
    seed = check.integer(data, "seed", 0, 0, MAX_SEED)

    engine = _flat_engine(check.at("[engine] "), check.table(data.get("engine", {}), "engine"), "engine")
    config = _check_engine(check.at("[engine] "), engine, model)
    runs, need = model_spec(config.llm.name), _block_need(config)  # the model that runs: the file's or --model

    requests: list[dict] = []
    explicit = check.tables(data.get("requests", []), "requests")
    if len(explicit) > MAX_REQUESTS:  # checked before any is parsed: 100,000 entries took minutes
        check.fail("requests", f"has {len(explicit)} entries, more than {MAX_REQUESTS}; keep a scenario to "
                               f"{MAX_REQUESTS} requests")
    for i, spec in enumerate(explicit):
        rng = random.Random(f"{seed}:requests:{i}")
        requests.append(parse_request(check.at(f"[[requests]] #{i + 1} "), spec, rng, runs, need))
    for i, gen in enumerate(check.tables(data.get("generators", []), "generators")):
        rng = random.Random(f"{seed}:generators:{i}")
        requests.extend(generate(check.at(f"[[generators]] #{i + 1} "), gen, rng, runs, need))
        if len(requests) > MAX_REQUESTS:
            check.fail("generators", f"the workload has more than {MAX_REQUESTS} requests ([[requests]] and "
                                     f"[[generators]] together); lower a count")
    if not requests:
        check.fail("requests", "the workload is empty; add at least one [[requests]] or [[generators]] entry")

    variants: dict[str, dict] = {}
    variant_plugins: dict[str, list[dict]] = {}
    compare = check.table(data.get("compare", {}), "compare")
    if len(compare) > MAX_VARIANTS:
        check.fail("compare", f"has {len(compare)} variants; at most {MAX_VARIANTS} are allowed")
    for name, overrides in compare.items():
        vcheck = check.at(f"[compare.{toml_key(name)}] ")
        check.table(overrides, f"compare.{toml_key(name)}")
        if not overrides:
            check.fail(f"compare.{toml_key(name)}", "is empty; list the engine settings this variant changes")
        overrides = dict(overrides)
        if "plugins" in overrides:
            variant_plugins[name] = _variant_plugins(vcheck, overrides.pop("plugins"), path, trust_plugins)
        overrides = _flat_engine(vcheck, overrides, f"compare.{toml_key(name)}")
        merged = {**engine, **overrides}
        # resolves a checkpoint path in merged["model"]; a variant's own model beats --model, as in engine_config
        variant_config = _check_engine(vcheck, merged, None if "model" in overrides else model)
        for i, spec in enumerate(requests):  # a smaller pool in a variant must still fit each request
            total = prompt_size(spec["prompt"]) + spec["max_new_tokens"]
            problem = _block_need(variant_config)(total)
            if problem:
                vcheck.fail("num_blocks", f"request #{i + 1} of the workload: {problem}")
        variants[name] = {key: merged[key] for key in overrides}

    plugins = []
    for i, spec in enumerate(check.tables(data.get("plugins", []), "plugins")):
        pcheck = check.at(f"[[plugins]] #{i + 1} ")
        pcheck.keys(spec, PLUGIN_KEYS)
        name = pcheck.string(spec, "name", "", max_len=200)
        if not name:
            pcheck.fail("name", "is missing; give a built-in plugin name, an entry point name or module:Class")
        options = dict(check.table(spec.get("options", {}), f"plugins #{i + 1} options"))
        if not trust_plugins:
            _refuse_module_spec(path, i, name)
        try:
            check_plugin_config(load_plugin(name, options), config)  # fail now, not when the engine starts
        except ValueError as exc:
            pcheck.fail("name", str(exc))
        plugins.append({"name": name, "options": options})

    changes = []
    for i, spec in enumerate(check.tables(data.get("changes", []), "changes")):
        ccheck = check.at(f"[[changes]] #{i + 1} ")
        step = ccheck.integer(spec, "step", None, 0, 10**9)
        if step is None:
            ccheck.fail("step", "is missing; give the step the change takes effect at (step = 20)")
        settings = {k: v for k, v in spec.items() if k != "step"}
        if not settings:
            ccheck.fail("step", "changes nothing; add a setting that may change mid-run (max_tokens_per_step = 96)")
        try:
            changed_config(config, settings)
        except ValueError as exc:
            ccheck.fail(next(iter(settings)), str(exc))
        changes.append((step, settings))

    return Scenario(name=path.stem, path=path, title=title, description=description, question=question,
                    engine=engine, requests=requests, summary=summary, seed=seed, variants=variants,
                    plugins=plugins, trust_plugins=trust_plugins, variant_plugins=variant_plugins, changes=changes)


def _variant_plugins(check: Checker, value, path: Path, trust_plugins: bool) -> list[dict]:
    """A variant's `plugins = [...]`: specs as on the command line (NAME or NAME:key=value,...)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        check.fail("plugins", f"must be an array of plugin specs such as [\"priority:reserve_tokens=8\"] "
                              f"([] for none), got {toml_type(value)} {show(value)}")
    out = []
    for i, spec in enumerate(value):
        try:
            name, options = parse_plugin_spec(spec)
            if not trust_plugins:
                _refuse_module_spec(path, i, name)
            load_plugin(name, options)
        except ValueError as exc:
            check.fail("plugins", str(exc))
        out.append({"name": name, "options": options})
    return out


def _first_line(text: str) -> str:
    """Default summary: the description's first sentence, cut to one listing line."""
    first = " ".join(text.split()).split(". ")[0]
    return first if len(first) <= SUMMARY_WIDTH else first[:SUMMARY_WIDTH - 3] + "..."

