"""Loads a scenario (a built-in name or a path to a TOML file) and builds its engine."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from engine import Engine, EngineConfig

BUILTIN_DIR = Path(__file__).parent


class ScenarioError(ValueError):
    """A scenario that cannot be loaded; the message names the file, the key and what is allowed."""


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

    def engine_config(self, **overrides) -> EngineConfig:
        settings = dict(self.engine)
        settings.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return EngineConfig(**settings)
        except ValueError as exc:
            raise ScenarioError(f"{self.path}: [engine] {exc}") from None

    def build_engine(self, **overrides) -> Engine:
        engine = Engine(self.engine_config(**overrides))
        for i, spec in enumerate(self.requests):
            try:
                engine.add_request(**spec)
            except ValueError as exc:
                raise ScenarioError(f"{self.path}: request {i}: {exc}") from None
        return engine


def _generate(gen: dict, rng: random.Random) -> list[dict]:
    count = gen.get("count", 1)
    lo_p, hi_p = gen.get("prompt_len", [8, 32])
    lo_o, hi_o = gen.get("max_new_tokens", [4, 16])
    span = gen.get("arrival_span", 0)
    start = gen.get("arrival_start", 0)
    out = []
    for _ in range(count):
        plen = rng.randint(lo_p, hi_p)
        out.append({
            "prompt": [rng.randrange(32, 127) for _ in range(plen)],
            "max_new_tokens": rng.randint(lo_o, hi_o),
            "arrival_step": start + (rng.randint(0, span) if span else 0),
            "priority": gen.get("priority", 0),
        })
    return out


def load_scenario(name_or_path: str) -> Scenario:
    path = Path(name_or_path)
    if path.suffix != ".toml":
        if name_or_path not in builtin_names():
            raise ScenarioError(f"unknown scenario {name_or_path!r}; built-in scenarios: "
                                f"{', '.join(builtin_names())} (or give a path to a .toml file)")
        path = BUILTIN_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise ScenarioError(f"{path}: no such scenario file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: invalid TOML: {exc}") from None
    rng = random.Random(data.get("seed", 0))
    requests = []
    for spec in data.get("requests", []):
        spec = dict(spec)
        if "prompt_len" in spec:
            spec["prompt"] = [rng.randrange(32, 127) for _ in range(spec.pop("prompt_len"))]
        requests.append(spec)
    for gen in data.get("generators", []):
        requests.extend(_generate(gen, rng))
    return Scenario(name=path.stem, path=path, title=data.get("title", path.stem),
                    description=data.get("description", ""), question=data.get("question", ""),
                    engine=dict(data.get("engine", {})), requests=requests)
