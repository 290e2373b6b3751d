"""movierec: a hybrid movie recommender.

This package is the top floor: the jobs (train, candidates, evaluate, compare, tune, report, demo)
and the CLI. The core they and every stage stand on is :mod:`movierec.core`; the names below are
its public entry points."""

from movierec.core.artifacts import Bundle, BundleError, BundleWriter, load_bundle
from movierec.core.config import Config, ConfigError, load_config
from movierec.core.data import Dataset, DataError
from movierec.core.loaders import load_csv, load_dataset

__version__ = "0.1.0"

__all__ = [
    "Bundle",
    "BundleError",
    "BundleWriter",
    "Config",
    "ConfigError",
    "DataError",
    "Dataset",
    "load_bundle",
    "load_config",
    "load_csv",
    "load_dataset",
]
