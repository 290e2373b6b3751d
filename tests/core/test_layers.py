"""The one-way import rules of the house, read from the code (deferred imports inside functions
count as much as those at the top of a file).

Layers, bottom to top: the core (``movierec/core/``) -> the stages (content -> retrieval ->
ranking) -> the serve-time layer (``recommender/``) -> the HTTP service (``serving/``) -> the top
floor: the jobs (train, candidates, evaluate, report, tune, demo) and the CLI, the plain modules of
``movierec/``. Each may import only what is below it (and itself).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

STAGES = ["content", "retrieval", "ranking"]


def _layer(module: str) -> str | None:
    """The layer a dotted module name belongs to (None: not the project's own)."""
    parts = module.split(".")
    top = parts[0]
    if top == "movierec":
        # the core is its own sub-package; everything else of ``movierec`` is the top floor
        return "core" if len(parts) > 1 and parts[1] == "core" else "jobs"
    if top in STAGES or top in ("recommender", "serving"):
        return top
    return None


# what each layer may import besides itself
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "content": {"core"},
    "retrieval": {"core", "content"},
    "ranking": {"core", "content", "retrieval"},
    "recommender": {"core", *STAGES},
    "serving": {"core", *STAGES, "recommender"},
    "jobs": {"core", *STAGES, "recommender", "serving"},
}


def _imports(source: str, name: str = "<file>") -> list[tuple[int, str]]:
    """Every absolute import in a file, at any depth (functions, methods, ``if`` blocks)."""
    out = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            # ``from movierec import cli`` names a module too
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names if node.module == "movierec"]
    return out


def _sources() -> dict[str, str]:
    """``{path relative to the repository: text}`` of every file of the project's packages."""
    return {
        str(f.relative_to(ROOT)): f.read_text()
        for pkg in ("movierec", *STAGES, "recommender", "serving")
        for f in sorted((ROOT / pkg).rglob("*.py"))
    }


def broken_imports(sources: dict[str, str]) -> list[str]:
    broken = []
    for rel, source in sources.items():
        own = _layer(".".join(Path(rel).with_suffix("").parts))
        assert own is not None, rel
        for lineno, name in _imports(source, rel):
            other = _layer(name)
            if other is None or other == own:
                continue
            if other not in ALLOWED[own]:
                broken.append(f"{rel}:{lineno} ({own}) imports {name} ({other})")
    return broken


def test_every_layer_imports_only_what_is_below_it() -> None:
    assert broken_imports(_sources()) == []


def test_serving_and_the_layer_never_import_lightning() -> None:
    bad = [
        f"{f.relative_to(ROOT)}:{n} imports {name}"
        for pkg in ("serving", "recommender")
        for f in sorted((ROOT / pkg).rglob("*.py"))
        for n, name in _imports(f.read_text(), str(f))
        if name.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric")
    ]
    assert bad == []


@pytest.mark.parametrize(
    ("module", "source", "why"),
    [
        ("retrieval/x.py", "def f():\n    from recommender import HybridRecommender\n", "a stage looking forward, deferred"),
        ("ranking/x.py", "import serving.app\n", "a stage importing the service"),
        ("movierec/core/x.py", "def f():\n    from ranking.features import FEATURES\n", "the core importing a stage"),
        ("movierec/core/x.py", "from movierec.pipeline import train\n", "the core importing a job"),
        ("movierec/core/x.py", "from movierec import __version__\n", "the core importing the top floor"),
        ("serving/x.py", "import movierec.cli\n", "serving importing the CLI"),
        ("recommender/x.py", "from movierec.pipeline import train\n", "the layer importing a job"),
        ("content/x.py", "from movierec import cli\n", "a stage importing the CLI"),
    ],
)
def test_the_rule_catches(module: str, source: str, why: str) -> None:
    """The checker itself: each of these is reported."""
    assert broken_imports({module: source}), why
