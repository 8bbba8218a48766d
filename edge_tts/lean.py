"""Modules the daemon's libraries import and it never uses, loaded only when something does
use them (issue 17: an idle Pi pays for no module it does not use).

- paho-mqtt imports `urllib.request` (and with it `http.client` and the `email` package) to
  read a SOCKS proxy from the environment, which it does only when PySocks is installed;
- websockets imports `importlib.metadata` for a development build's version, not a release's;
- wyoming reads its own version with `importlib.metadata` at import, which parses the package's
  METADATA file with the `email` package: 1.5 MiB of code for one string nothing here shows.

Together about 2 MiB of an idle daemon's memory. Each of the first two stands in
`sys.modules` as a module that imports the real one on the first attribute read, so whoever
does use it gets it whole (`importlib.util.find_spec` still answers: the stand-in carries the
real module's spec). wyoming's version is read from the name of its installed `.dist-info`
directory, which pip names after it (the `{name}-{version}.dist-info` of the packaging spec);
where there is not exactly one, wyoming reads it itself as before.

`defer()` runs when edge_tts is imported (`edge_tts/__init__.py`), before any of them, and
leaves alone a module already imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from pathlib import Path
from typing import Any

UNUSED = ("urllib.request", "importlib.metadata")
VERSIONED = ("wyoming",)  # packages that read their own version at import (`<name>.version`)
_lock = threading.Lock()


class _Deferred(types.ModuleType):
    """Stands in for a module until the first attribute read, which imports the real one."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_real(self), name)


def _real(stand_in: _Deferred) -> types.ModuleType:
    with _lock:
        if sys.modules.get(stand_in.__name__) is stand_in:
            del sys.modules[stand_in.__name__]
        # The import system puts the real module in sys.modules and on its parent package.
        return importlib.import_module(stand_in.__name__)


def defer(unused: tuple[str, ...] = UNUSED, versioned: tuple[str, ...] = VERSIONED) -> None:
    """Put the stand-ins in place of modules not imported yet (see the module's docstring):
    for the modules `unused`, and the `.version` of the packages `versioned`."""
    # The versions first: finding a stand-in's spec imports its parent package.
    for package in versioned:
        if package not in sys.modules and (version := _installed_version(package)):
            module = types.ModuleType(f"{package}.version", "Its version (edge_tts.lean).")
            module.__dict__.update(__version__=version, __all__=["__version__"])
            sys.modules[module.__name__] = module
    for name in unused:
        if name in sys.modules:
            continue
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):  # its package is not there: importing it fails as ever
            continue
        if spec is None:
            continue
        stand_in = _Deferred(name)
        stand_in.__spec__ = spec
        parent, _, child = name.rpartition(".")
        sys.modules[name] = stand_in
        setattr(importlib.import_module(parent), child, stand_in)


def _installed_version(package: str) -> str | None:
    """A package's version from its `.dist-info` directory's name, as pip installed it; None
    when that is not certain (not installed, installed otherwise, or two of them)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    where = Path(next(iter(spec.submodule_search_locations))).parent
    found = list(where.glob(f"{package}-*.dist-info"))
    if len(found) != 1:
        return None
    return found[0].name.removeprefix(f"{package}-").removesuffix(".dist-info")
