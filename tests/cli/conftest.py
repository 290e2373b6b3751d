"""CLI fixtures: the serving suite's tiny trained bundle, for commands that load a model."""

from tests.serving.conftest import bundle_path  # noqa: F401  (fixture re-export)
