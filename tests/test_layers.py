"""The layers read bottom-up (docs/design.md): a module imports only from its own layer or
the ones below. Checked on the source, statement by statement (lazy imports inside
functions count too), so a new upward import fails here with the line that made it."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

# Bottom-up. A module belongs to the layer of its longest matching prefix.
LAYERS: list[tuple[str, ...]] = [
    ("bantai.errors",),
    ("bantai.wire",),  # the Node-compatibility rules for written values
    ("bantai.observe",),  # the instrumentation hooks and DEBUG logging (slow paths only)
    ("bantai.steps", "bantai.codec"),  # neutral: the step protocol, the schema codec
    ("bantai.core",),  # contexts, rules, policies
    ("bantai.storage",),  # protocol, inputs, options, locking, memory, with_storage
    ("bantai.ratelimit.periods", "bantai.ratelimit.algorithms"),  # pure decisions
    ("bantai.redis",),  # the adapter (uses the pure decisions for its consume script)
    ("bantai.ratelimit",),  # consume/check/increment, with_rate_limit (no Redis import)
    ("bantai.web",),  # HTTP guards (Starlette / FastAPI), over policies and rate limits
    ("bantai.otel",),  # OpenTelemetry hooks (optional extra)
    ("bantai", "bantai.testing", "bantai.demo"),  # the package facade and the tools
]


def _layer(module: str) -> int:
    best, best_len = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best >= 0, f"{module} is in no layer: add it to LAYERS"
    return best


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted((SRC / "bantai").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append((".".join(parts), path))
    return out


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            # `from bantai.redis import scripts` imports the module bantai.redis.scripts
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "bantai"]


def test_every_import_points_down_or_sideways() -> None:
    known = {name for name, _ in _modules()}
    upward = []
    for module, path in _modules():
        own = _layer(module)
        for line, name in _imports(path, module):
            if name not in known:  # `from bantai.x import SomeClass`: the module is bantai.x
                continue
            if _layer(name) > own:
                upward.append(f"{path.relative_to(SRC)}:{line}: {module} imports {name}")
    assert upward == []


def test_the_layer_map_covers_every_module() -> None:
    for module, _ in _modules():
        _layer(module)


def test_core_and_storage_do_not_depend_on_each_other_both_ways() -> None:
    """The cycle this test was written for: core used to import storage (codec, steps)."""
    for module, path in _modules():
        if module.startswith("bantai.core"):
            assert not [n for _, n in _imports(path, module) if n.startswith("bantai.storage")]
        if module.startswith("bantai.ratelimit") and module != "bantai.ratelimit.algorithms":
            assert not [n for _, n in _imports(path, module) if n.startswith("bantai.redis")]
