"""Print pip pins at the lowest versions pyproject.toml declares: ``name[extras]==floor`` for every
``>=`` requirement of the base dependencies and of the extras named on the command line.

    python .ci/min_versions.py train test > min-requirements.txt

Used by the min-versions job in .ci/run, which installs these pins in a second venv and runs a
smoke subset of the tests, so every floor in pyproject.toml is one that was installed and tested.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

REQ = re.compile(r"^\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(.*)$")


def pins(extras: list[str]) -> list[str]:
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    out = []
    for req in reqs:
        name, extra, spec = REQ.match(req.split(";")[0]).groups()  # type: ignore[union-attr]
        floor = next((part.strip()[2:].strip() for part in spec.split(",") if part.strip().startswith(">=")), None)
        if floor is None:
            raise SystemExit(f"{req}: no >= floor to pin")
        out.append(f"{name}{extra or ''}=={floor}")
    return out


if __name__ == "__main__":
    print("\n".join(pins(sys.argv[1:])))
