"""Console logging for the CLI: our own messages at INFO, library chatter at DEBUG.

Lightning announces hardware ("GPU available: False", "TPU available"), advertises ("Tip: ...
litlogger"), warns about things we decided on purpose ("no val_dataloader", too few loader
workers), and deprecation warnings come from several libraries. None of that helps a person
running ``movierec train``. :func:`setup_logging` routes Python warnings into logging and demotes
every record from those libraries (and every warning) to DEBUG, so ``-v`` shows them and the
default console holds only our progress bars and summaries.
"""

from __future__ import annotations

import logging
import os
import sys

CHATTY = ("lightning", "pytorch_lightning", "lightning_fabric", "lightning_utilities", "torch", "faiss", "optuna", "alembic", "sqlalchemy", "py.warnings", "matplotlib", "PIL")
"""Logger name prefixes whose records are demoted to DEBUG."""
QUIET_ENV = "MOVIEREC_VERBOSE"
"""Set to "1" by ``-v``, so spawned children (the background rating model) follow the parent."""


def _chatty(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in CHATTY)


class DemoteLibraries(logging.Filter):
    """Turns a library's record into a DEBUG record; drops it unless ``verbose``."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if not _chatty(record.name):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return self.verbose


OWN_CONSOLE = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")
"""Loggers that Lightning gives a console handler of its own at import ("INFO: GPU available")."""


class _PropagateOnly(logging.Logger):
    """A library logger that may not print by itself: handlers it adds are ignored and its
    records always propagate to the root handler (which demotes them to DEBUG)."""

    def addHandler(self, hdlr: logging.Handler) -> None:  # noqa: N802 - logging's name
        pass

    @property  # type: ignore[override]
    def propagate(self) -> bool:
        return True

    @propagate.setter
    def propagate(self, value: bool) -> None:
        pass


def quiet_libraries() -> None:
    """Route warnings into logging and keep Lightning's loggers from printing on their own.

    Lightning is imported lazily (serving never imports it), so its loggers are claimed before the
    import as :class:`_PropagateOnly`; a logger that exists already loses its handlers.
    """
    logging.captureWarnings(True)
    manager = logging.Logger.manager
    for name in OWN_CONSOLE:
        existing = manager.loggerDict.get(name)
        if isinstance(existing, logging.Logger):
            for h in list(existing.handlers):
                existing.removeHandler(h)
            existing.propagate = True
            continue
        previous = logging.getLoggerClass()
        logging.setLoggerClass(_PropagateOnly)
        try:
            logging.getLogger(name)
        finally:
            logging.setLoggerClass(previous)


def setup_logging(verbose: bool = False, child: bool = False) -> None:
    """One stderr handler on the root logger: INFO (DEBUG with ``verbose``) for our messages,
    library records only with ``verbose`` and then as DEBUG. A ``child`` process (the background
    rating model) shows only warnings unless the parent ran with ``-v``."""
    verbose = verbose or os.environ.get(QUIET_ENV) == "1"
    if verbose:
        os.environ[QUIET_ENV] = "1"
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_movierec", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._movierec = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
        root.addHandler(handler)
    for f in list(handler.filters):
        handler.removeFilter(f)
    handler.addFilter(DemoteLibraries(verbose))
    root.setLevel(logging.DEBUG if verbose else logging.WARNING if child else logging.INFO)
    quiet_libraries()
