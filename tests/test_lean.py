"""What the daemon's libraries import and never use waits until something uses it
(edge_tts.lean); whoever does gets the real module. Each case is a fresh interpreter: this
one has imported them all already (pytest reads plugins with importlib.metadata)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from edge_tts import lean
from edge_tts.lean import _installed_version

from conftest import fresh_python


def test_a_library_that_uses_a_waiting_module_gets_the_real_one() -> None:
    out = fresh_python("""
        import importlib.util, sys, types
        import edge_tts
        names = ("urllib.request", "importlib.metadata")
        print({n: type(sys.modules[n]).__name__ for n in names})
        assert not any(n.startswith(("email", "http.client")) for n in sys.modules)
        # Asked where it is, it answers without loading (the import system reads its spec).
        assert importlib.util.find_spec("urllib.request").origin.endswith("urllib/request.py")
        assert type(sys.modules["urllib.request"]).__name__ == "_Deferred"

        import urllib.request  # as paho does, then an attribute read
        assert urllib.request.Request("http://example.com/a").full_url == "http://example.com/a"
        assert type(sys.modules["urllib.request"]) is types.ModuleType
        assert urllib.request is sys.modules["urllib.request"]

        from importlib.metadata import version  # as wyoming does
        import websockets.version
        assert version("websockets") == websockets.version.version
        assert type(sys.modules["importlib.metadata"]) is types.ModuleType
        print("email.parser" in sys.modules)
    """)
    assert out.splitlines() == [
        "{'urllib.request': '_Deferred', 'importlib.metadata': '_Deferred'}",
        "True",
    ]


def test_a_name_bound_to_the_stand_in_before_it_loaded_still_works() -> None:
    """`import importlib.metadata as m` before any use binds the stand-in itself."""
    out = fresh_python("""
        import edge_tts
        import importlib.metadata as m
        from urllib import request
        print(type(m).__name__, type(request).__name__)
        print(m.version("wyoming") == m.version("wyoming"), callable(request.urlopen))
        print(type(m.distribution("wyoming")).__name__)
    """)
    assert out.splitlines() == ["_Deferred _Deferred", "True True", "PathDistribution"]


def test_a_module_imported_before_edge_tts_is_left_alone() -> None:
    out = fresh_python("""
        import sys, types, urllib.request
        import edge_tts
        print(type(sys.modules["urllib.request"]) is types.ModuleType)
        print(type(sys.modules["importlib.metadata"]).__name__)
    """)
    assert out.splitlines() == ["True", "_Deferred"]


def test_wyoming_has_the_version_it_would_have_read_itself() -> None:
    out = fresh_python("""
        import sys
        import edge_tts, wyoming
        print("email.parser" in sys.modules, "importlib.metadata._meta" in sys.modules)
        from importlib.metadata import version
        print(wyoming.__version__ == version("wyoming"), wyoming.__version__.count(".") >= 1)
    """)
    assert out.splitlines() == ["False False", "True True"]


@pytest.mark.parametrize(
    ("dist_infos", "expected"),
    [
        (["somepkg-1.10.2.dist-info"], "1.10.2"),
        (["somepkg-2.0.0rc1.dist-info"], "2.0.0rc1"),
        ([], None),  # installed some other way: wyoming reads its own
        (["somepkg-1.0.dist-info", "somepkg-1.1.dist-info"], None),  # a leftover: unsure
        (["somepkg_extra-3.0.dist-info"], None),  # another package's
    ],
)
def test_a_version_is_read_from_the_dist_info_only_when_certain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dist_infos: list[str], expected: str | None
) -> None:
    (tmp_path / "somepkg").mkdir()
    (tmp_path / "somepkg" / "__init__.py").write_text("")
    for name in dist_infos:
        (tmp_path / name).mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _installed_version("somepkg") == expected


def test_no_version_for_a_package_not_installed_or_not_a_package() -> None:
    assert _installed_version("no_such_package_here") is None
    assert _installed_version("textwrap") is None  # a module, not a package


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`leanpkg`, installed as pip installs (with its `.dist-info`), not imported yet: its
    `heavy` module notes in `loads.txt` each time it is run."""
    root = tmp_path / "site"
    (root / "leanpkg").mkdir(parents=True)
    (root / "leanpkg" / "__init__.py").write_text("from .version import __version__\n")
    (root / "leanpkg" / "version.py").write_text("__version__ = 'read the slow way'\n")
    (root / "leanpkg" / "heavy.py").write_text(
        "import pathlib\n"
        "with open(pathlib.Path(__file__).parent.parent / 'loads.txt', 'a') as f:\n"
        "    f.write('loaded\\n')\n"
        "def work():\n    return 42\n"
    )
    (root / "leanpkg" / "sub").mkdir()
    (root / "leanpkg" / "sub" / "__init__.py").write_text("")
    (root / "leanpkg" / "sub" / "deep.py").write_text("def work():\n    return 7\n")
    (root / "leanpkg-3.1.4.dist-info").mkdir()
    monkeypatch.syspath_prepend(str(root))
    for name in ("leanpkg", "leanpkg.heavy", "leanpkg.version", "leanpkg.sub", "leanpkg.sub.deep"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return root / "loads.txt"


def defer(*unused: str) -> None:
    lean.defer(unused or ("leanpkg.heavy",), ("leanpkg",))


def test_a_deferred_module_runs_at_its_first_use_and_only_once(package: Path) -> None:
    defer()
    import leanpkg.heavy  # type: ignore[import-not-found]

    assert not package.exists()  # imported, not run
    assert type(sys.modules["leanpkg.heavy"]).__name__ == "_Deferred"
    assert sys.modules["leanpkg.heavy"].__spec__.name == "leanpkg.heavy"
    assert leanpkg.heavy.work() == 42
    assert leanpkg.heavy.work() == 42
    assert package.read_text() == "loaded\n"
    assert type(sys.modules["leanpkg.heavy"]) is types.ModuleType
    assert sys.modules["leanpkg"].heavy is sys.modules["leanpkg.heavy"]
    assert leanpkg.__version__ == "3.1.4"  # from the dist-info's name, not version.py


def test_a_module_already_imported_is_not_replaced(package: Path) -> None:
    import leanpkg.heavy

    defer()
    assert type(sys.modules["leanpkg.heavy"]) is types.ModuleType
    assert leanpkg.__version__ == "read the slow way"
    assert package.read_text() == "loaded\n"


def test_a_module_that_is_not_there_is_left_to_fail_as_it_would(package: Path) -> None:
    defer("leanpkg.missing", "nopkg_here.missing")
    assert "leanpkg.missing" not in sys.modules and "nopkg_here" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        import leanpkg.missing  # type: ignore[import-not-found]  # noqa: F401


def test_each_module_is_seen_to_whatever_came_before_it(package: Path) -> None:
    """One already imported, one not there: the next is deferred all the same; and one a
    level deeper hangs on its own package."""
    import leanpkg.heavy

    names = ("leanpkg.heavy", "leanpkg.missing", "nopkg_here.x", "leanpkg.sub.deep")
    defer(*names)
    import leanpkg.sub.deep  # type: ignore[import-not-found]

    assert type(sys.modules["leanpkg.sub.deep"]).__name__ == "_Deferred"
    assert leanpkg.sub.deep.work() == 7
    assert type(sys.modules["leanpkg.sub.deep"]) is types.ModuleType
