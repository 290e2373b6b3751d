"""The serve-time layer's tests use the serving tests' small trained bundle."""

from tests.serving.conftest import bundle_path  # noqa: F401  (the fixture, shared)
