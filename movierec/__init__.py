"""movierec core: dataset schema and loaders, synthetic data, splits, metrics, baselines,
configuration, the artifact bundle, the training pipeline and the CLI."""

from movierec.artifacts import Bundle, BundleError, BundleWriter, load_bundle
from movierec.config import Config, ConfigError, load_config
from movierec.data import Dataset, DataError, load_csv, load_dataset

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
