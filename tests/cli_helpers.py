"""Helpers shared by test modules (importable because tests/conftest.py puts this folder on
sys.path; pytest runs with --import-mode=importlib, so test modules cannot import each other)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the console entry point in-process (exit-code mapping included)."""
    from movierec.cli import main

    monkeypatch.setattr(sys, "argv", ["movierec", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def load_script(path: Path) -> ModuleType:
    """A script that is not in a package (``benchmarks/*.py``, test data generators) imported as
    the module named by its file stem, and registered in ``sys.modules`` under that name (its
    dataclasses and pickling look themselves up there)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module
