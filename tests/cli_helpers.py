"""Helpers shared by test modules (importable because tests/conftest.py puts this folder on
sys.path; pytest runs with --import-mode=importlib, so test modules cannot import each other)."""

from __future__ import annotations

import sys

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
