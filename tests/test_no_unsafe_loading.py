"""Artifacts are LightGBM text, JSON, Parquet or numpy without pickle: nothing in the package may
load with pickle, eval or exec, and every numpy load must forbid pickles explicitly."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("engine/**/*.py"), *ROOT.glob("rankers/**/*.py")])
BANNED_MODULES = {"pickle", "cPickle", "dill", "joblib", "marshal", "shelve", "cloudpickle"}
BANNED_CALLS = {"eval", "exec"}


def _problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for name in names:
                if name and name.split(".")[0] in BANNED_MODULES:
                    found.append(f"{path.name}:{node.lineno} imports {name}")
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if isinstance(func, ast.Name) and name in BANNED_CALLS:
                found.append(f"{path.name}:{node.lineno} calls {name}()")
            if name == "load" and isinstance(func, ast.Attribute):
                owner = func.value
                if isinstance(owner, ast.Name) and owner.id in {"np", "numpy"}:
                    kw = {k.arg: k.value for k in node.keywords}
                    flag = kw.get("allow_pickle")
                    if not (isinstance(flag, ast.Constant) and flag.value is False):
                        found.append(
                            f"{path.name}:{node.lineno} np.load without allow_pickle=False"
                        )
            if name in {"read_pickle", "to_pickle"}:
                found.append(f"{path.name}:{node.lineno} calls {name}()")
    return found


def test_sources_found() -> None:
    assert len(SOURCES) > 10, "the scan must see the package sources"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_pickle_eval_or_unsafe_numpy_load(path: Path) -> None:
    assert _problems(path) == []


def test_scanner_catches_what_it_bans(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nimport numpy as np\nnp.load('x.npy')\n"
        "np.load('y.npz', allow_pickle=True)\neval('1')\n"
    )
    problems = _problems(bad)
    assert len(problems) == 4, problems
