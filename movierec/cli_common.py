"""What every ``movierec`` subcommand shares: the usage error, the check for the ``[train]``
extra, progress-bar policy, JSON output, the data options and loading a bundle."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer


class UsageError(ValueError):
    """A bad command-line value; reported as one line with exit code 2."""


TRAIN_EXTRA = ("lightning", "sklearn", "optuna", "matplotlib")
"""The modules of the ``[train]`` extra (pyproject.toml). A base install loads a bundle, serves it,
answers queries and writes candidates without them."""


def _absent(modules: tuple[str, ...]) -> list[str]:
    import importlib.util

    absent = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken or hidden package counts as absent
            found = False
        if not found:
            absent.append(name)
    return absent


def needs_train_extra(command: str, modules: tuple[str, ...] = TRAIN_EXTRA) -> None:
    """Before any work: one line and exit 2 when a command needs what a base install lacks."""
    absent = _absent(modules)
    if absent:
        raise UsageError(f"movierec {command} needs the [train] extra (missing: {', '.join(absent)}): pip install 'movierec[train]'")


def progress(as_json: bool = False) -> bool:
    """Progress bars are for a person at a terminal: none in ``--json`` output, none in a log file
    (it gets the one summary line per stage instead). ``MOVIEREC_PROGRESS=0`` or ``1`` decides for
    scripts either way."""
    if as_json:
        return False
    forced = os.environ.get("MOVIEREC_PROGRESS")
    if forced in ("0", "1"):
        return forced == "1"
    return sys.stderr.isatty()


def emit(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=1, default=str))


def data_options(data: Optional[Path], ratings: Optional[Path], items: Optional[Path]) -> object:
    from movierec.core.loaders import load_data

    if (data is None) == (ratings is None):
        raise UsageError("give either --data PATH or --ratings CSV [--items CSV]")
    if data is not None and items is not None:
        raise UsageError("--items goes with --ratings, not with --data")
    return load_data(data, ratings=ratings, items=items)


def load_model(path: Path) -> object:
    from recommender import HybridRecommender

    if not path.exists():
        raise UsageError(f"{path}: no such model directory")
    return HybridRecommender.load(path)
