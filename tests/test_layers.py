"""The code's shape, held: data flows one way (mqtt → queue → speaker → engines → player),
so no module imports one above it, and there is no import circle (STYLE.md, "Layout")."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "edge_tts"

# Lower levels know nothing of higher ones. A new module takes its place here.
LEVELS: dict[str, int] = {
    # 0: leaves, no edge_tts import but these
    "edge_tts": 0,
    "edge_tts.memory": 0,
    "edge_tts.errors": 0,
    "edge_tts.paths": 1,
    "edge_tts.events": 0,
    "edge_tts.backoff": 0,
    "edge_tts.resample": 0,
    "edge_tts.text": 0,
    "edge_tts.secret": 0,
    "edge_tts.models": 0,
    "edge_tts.systemd": 0,
    "edge_tts.ssml": 0,
    "edge_tts.clock": 0,
    "edge_tts.trust": 0,
    "edge_tts.protocols": 0,
    "edge_tts.protocols.inference": 1,
    "edge_tts.protocols.realtime": 1,
    "edge_tts.protocols.share": 1,
    # 1–2: values and rules
    "edge_tts.config": 1,
    "edge_tts.announcement": 1,
    "edge_tts.chime": 1,
    "edge_tts.profiles": 2,
    "edge_tts.policy": 2,
    "edge_tts.queue": 2,
    "edge_tts.journal": 2,
    # 3: parts that do I/O
    "edge_tts.engines": 3,
    "edge_tts.keeper": 3,
    "edge_tts.player": 3,
    "edge_tts.mqtt": 3,
    "edge_tts.costs": 3,
    "edge_tts.advertise": 3,
    "edge_tts.group": 4,
    "edge_tts.discovery": 4,
    "edge_tts.cache": 4,
    "edge_tts.status": 5,
    # 4–5: the engines, then the cloud that owns them
    "edge_tts.engines.cosyvoice": 4,
    "edge_tts.engines.sambert": 5,
    "edge_tts.engines.qwen": 4,
    "edge_tts.engines.piper": 4,
    "edge_tts.engines.cloud": 6,
    # 6–9: one announcement (and Home Assistant's voice), the service, the command line
    "edge_tts.speech": 5,
    "edge_tts.speaker": 6,
    "edge_tts.wyoming_server": 7,
    "edge_tts.checks": 8,
    "edge_tts.daemon": 8,
    "edge_tts.__main__": 9,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Each module of edge_tts and the edge_tts modules it imports (at any point)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("edge_tts")}
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0:
                    if (node.module or "").startswith("edge_tts"):
                        found.add(str(node.module))
                    continue
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if _is_module(sub) else target)
        graph[name] = found - {name}
    return graph


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or path.is_dir()


def test_every_module_has_its_level() -> None:
    assert set(imports()) == set(LEVELS)


def test_no_module_imports_one_above_it() -> None:
    upward = [
        f"{module} (level {LEVELS[module]}) imports {dep} (level {LEVELS[dep]})"
        for module, deps in imports().items()
        for dep in deps
        if LEVELS[dep] > LEVELS[module]
    ]
    assert upward == []


def test_there_is_no_import_circle() -> None:
    graphlib.TopologicalSorter(imports()).prepare()  # raises CycleError with the circle
