"""Loaded by a child Python whose PYTHONPATH starts here: makes the ``[train]`` extra's packages
unimportable, as on a base install (``pip install movierec`` without extras), and writes every
module the process imported to $MOVIEREC_MODULES_OUT at exit."""

import atexit
import importlib.abc
import os
import sys

TRAIN_EXTRA = ("lightning", "pytorch_lightning", "lightning_fabric", "torchmetrics", "sklearn", "optuna", "matplotlib")


class _BlockTrainExtra(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):  # noqa: ANN001 - importlib's protocol
        if name.split(".")[0] in TRAIN_EXTRA:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: base install without [train])", name=name)
        return None


sys.meta_path.insert(0, _BlockTrainExtra())


def _dump() -> None:
    out = os.environ.get("MOVIEREC_MODULES_OUT")
    if out:
        with open(f"{out}.{os.getpid()}", "w") as f:
            f.write("\n".join(sorted(sys.modules)))


atexit.register(_dump)
