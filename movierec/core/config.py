"""Typed configuration: one pydantic model per stage, nested in :class:`Config`.

``configs/*.yaml`` is read with ``yaml.safe_load`` and validated; ``extra="forbid"`` makes a
misspelt key an error that names it. Command-line overrides use dotted keys
(``retrieval.epochs=5``).
"""

from __future__ import annotations

import difflib
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ContentConfig(_Section):
    """TF-IDF over item text, reduced by TruncatedSVD to dense vectors."""

    dim: int = Field(128, ge=2, le=4096, description="dense TF-IDF -> SVD dimension")
    min_df: int = Field(1, ge=1)
    max_features: int | None = Field(200_000, ge=16)
    title_weight: float = Field(1.0, ge=0)
    genre_weight: float = Field(1.5, ge=0)
    tag_weight: float = Field(1.0, ge=0)
    year_weight: float = Field(0.5, ge=0)
    description_weight: float = Field(1.0, ge=0)
    exact_below: int = Field(20_000, ge=0, description="catalogues smaller than this use exact sparse cosine")
    title_ngrams: int = Field(2, ge=1, le=3, description="longest word n-gram taken from titles")
    max_text_chars: int = Field(20_000, ge=100, description="longer text fields are cut (bounds work per item)")
    profile_centering: float = Field(
        0.5,
        ge=0,
        le=1,
        description="share of a user's mean rating subtracted before weighting profile items (0: every rated movie "
        "pulls the profile towards it; 1: movies rated below the user's mean push it away, which hurts when every rated "
        "movie counts as liked)",
    )
    fit_threads: int = Field(
        1, ge=1, description="BLAS threads while fitting the SVD (OpenBLAS threads collapse when cores are shared)"
    )


class IndexConfig(_Section):
    """FAISS: exact inner product below ``ann_threshold`` items, HNSW or IVF above.

    ``ivfpq`` (IVF with product-quantised codes) is for catalogues of millions: it stores
    ``pq_m * pq_nbits / 8`` bytes per vector instead of ``4 * dim`` and is trained on a sample.
    """

    kind: Literal["auto", "flat", "hnsw", "ivf", "ivfpq"] = Field("auto", description="auto: flat below ann_threshold items, hnsw above")
    ann_threshold: int = Field(50_000, ge=1)
    hnsw_m: int = Field(32, ge=4)
    ef_search: int = Field(128, ge=1)
    nlist: int | None = Field(None, ge=1, description="IVF lists (None: 4 * sqrt(n_items))")
    nprobe: int = Field(16, ge=1, description="IVF lists scanned per query")
    pq_m: int = Field(16, ge=1, description="ivfpq: sub-quantizers (must divide the vector dimension)")
    pq_nbits: int = Field(8, ge=4, le=12, description="ivfpq: bits per sub-quantizer code")
    train_size: int | None = Field(
        None, ge=1, description="IVF/ivfpq: vectors sampled to train the quantizers (None: 64 per list, at least 64 per PQ centroid)"
    )


class RetrievalConfig(_Section):
    """Two-tower model trained with in-batch sampled softmax and log-q correction."""

    dim: int = Field(64, ge=4, le=1024, description="two-tower vector size")
    hidden: int = Field(128, ge=4)
    history_len: int = Field(100, ge=1, description="most recent rated movies pooled by the user tower")
    sequential: bool | Literal["auto"] = Field(
        "auto",
        description="train the two towers for each user's next movies: every training row's history is the movies rated just "
        "before its target (causal_share of the rows), early stopping watches each user's latest ratings, and the user tower "
        "also pools the last recent_len movies by recency; false: random history windows, a random validation share, the plain "
        "mean; auto: on when the ranker learns each user's latest ratings (ranking.holdout resolves to temporal)",
    )
    recent_len: int = Field(
        10,
        ge=0,
        description="sequential: the user tower also pools the last N rated movies, each weighted by recent_decay per place from "
        "the newest, so the order of the history counts (0: the plain mean only)",
    )
    recent_decay: float = Field(0.8, gt=0, le=1, description="sequential: weight ratio of each recent movie to the next newer one")
    causal_share: float = Field(
        1.0,
        ge=0,
        le=1,
        description="sequential: share of training rows whose history is the movies rated just before the target (the query a "
        "service makes for the next movies); the others take a random window of the user's history",
    )
    init: Literal["random", "svd"] = Field(
        "svd",
        description="start of the id embeddings: random, or svd (the factors of a truncated SVD of the training users x movies "
        "matrix, for the user ids, the movie ids and the movies pooled over a history)",
    )
    id_dropout: float = Field(0.3, ge=0, lt=1, description="share of rows trained without id embeddings (cold items, new users)")
    dropout: float = Field(0.1, ge=0, lt=1)
    temperature: float = Field(0.1, gt=0)
    logq_weight: float = Field(
        1.25,
        ge=0,
        le=4,
        description="strength of the popularity (log-q) correction of in-batch negatives (1: the unbiased correction; above 1 "
        "pushes popular movies further down)",
    )
    lr: float = Field(6e-3, gt=0, description="peak learning rate")
    lr_decay: Literal["none", "cosine", "warmup_cosine"] = Field(
        "warmup_cosine",
        description="cosine: the learning rate falls to 5% over the epoch budget; warmup_cosine: it first climbs from zero over "
        "the first epoch, then falls the same way",
    )
    weight_decay: float = Field(1e-6, ge=0)
    batch_size: int = Field(1024, ge=8)
    epochs: int = Field(
        6, ge=1, description="epoch budget, over which the learning rate schedule runs; early stopping on validation Recall@50 may end sooner"
    )
    patience: int = Field(2, ge=1, description="epochs without a better validation Recall@50 before training stops")
    refit_epochs: int = Field(
        3,
        ge=0,
        description="after early stopping, train this many more epochs on every training rating (the validation part and "
        "the ranker's held-out part included) before the vectors are served (0: serve the early-stopped model)",
    )
    max_steps_per_epoch: int | None = Field(
        None, ge=1, description="stop each epoch after this many batches, a random subset of the positives (None: a full pass)"
    )
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    val_max_users: int | None = Field(
        None, ge=1, description="validation users scored per epoch, a fixed seeded sample (None: all; bounds the users x items scoring on big data)"
    )
    min_rating: float | None = Field(None, description="ratings below this are not positives (None: keep all)")
    threads: int = Field(1, ge=1)
    cold_map: bool = Field(
        True,
        description="movies without training ratings (and movies added later) get their item vector from a ridge map of "
        "their TF-IDF terms and genres onto the rated movies' vectors (retrieval/cold.py) instead of the item tower",
    )
    cold_ridge: float = Field(0.5, gt=0, description="ridge weight of the cold map (chosen on validation cold splits)")
    cold_iters: int = Field(30, ge=1, description="most conjugate-gradient steps fitting the cold map")


class RatingConfig(_Section):
    """Dedicated rating model (ranking/rating.py): biases, item kNN-baseline, biased MF and
    I-AutoRec blended by a ridge stacker fitted on a validation split carved from training.
    Defaults chosen on a validation split of MovieLens 100K's u1.base
    (benchmarks/rating_quality.py --validate)."""

    enabled: bool = Field(True, description="train the rating model with the ranker (P1 predictions)")
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="share of each user's ratings held out for early stopping and the stacker")
    refit: bool = Field(False, description="retrain MF and I-AutoRec on all training ratings for the epochs early stopping found: a slightly lower RMSE for a longer rating-model fit; turn on when rating predictions matter more than training time")
    bias_damping: float = Field(5.0, ge=0, description="pseudo-counts shrinking user and item biases")
    knn_k: int = Field(40, ge=0, description="neighbours per prediction of the item kNN-baseline (0: off)")
    knn_keep: int = Field(200, ge=1, description="similar items stored per item")
    knn_shrinkage: float = Field(300.0, ge=0, description="Pearson-baseline similarity shrinkage by co-rater count")
    knn_max_items: int = Field(30_000, ge=1, description="the kNN component is skipped above this many items (quadratic)")
    mf_dim: int = Field(64, ge=0, description="biased MF factors (0: off)")
    mf_lr: float = Field(5e-3, gt=0)
    mf_reg: float = Field(0.1, ge=0)
    mf_epochs: int = Field(40, ge=1)
    mf_max_steps_per_epoch: int | None = Field(
        None, ge=1, description="stop each MF epoch after this many batches, a fresh random subset of the ratings (None: a full pass)"
    )
    mf_sparse: bool = Field(
        False,
        description="biased MF with sparse gradients and lazy Adam: a step costs the batch's rows instead of the whole "
        "factor tables (chosen by movierec/core/sizing.py for large user + item counts)",
    )
    autorec_hidden: int = Field(500, ge=0, description="I-AutoRec hidden units (0: off)")
    autorec_reg: float = Field(100.0, ge=0, description="I-AutoRec L2 weight (the paper's lambda)")
    autorec_lr: float = Field(3e-3, gt=0, description="Adam learning rate of I-AutoRec (few item batches per epoch: a higher rate stops in fewer epochs)")
    autorec_dropout: float = Field(0.2, ge=0, lt=1, description="dropout on I-AutoRec's hidden layer while training")
    autorec_batch_items: int = Field(256, ge=1)
    autorec_epochs: int = Field(150, ge=1, description="upper bound; early stopping on validation RMSE")
    autorec_max_users: int = Field(200_000, ge=1, description="I-AutoRec is skipped above this many users (its layers are n_users wide)")
    patience: int = Field(10, ge=1, description="epochs without a better validation RMSE before I-AutoRec stops")
    mf_patience: int = Field(
        5, ge=1,
        description="epochs without a better validation RMSE before biased MF stops (MF settles sooner than I-AutoRec, "
        "so it waits less)",
    )
    stack_ridge: float = Field(1e-4, ge=0, description="ridge weight of the stacker (per validation rating)")
    stack_support: bool = Field(True, description="stacker weights vary with the user's and item's rating counts (feature-weighted stacking)")
    threads: int = Field(1, ge=1)
    background: bool = Field(
        True,
        description="train in a second process while the two-tower model and the ranker train; used when training "
        "runs in one process, the machine has 2+ cores and the data has 20,000+ ratings",
    )


class RankingConfig(_Section):
    """Ranker over (user, candidate) features, trained on a held-out slice of the training data.

    The training data is split per user (``holdout``: the latest ``holdout_fraction`` of each
    user's ratings, or a random ``holdout_fraction``); the two-tower model learns on the rest and
    the ranker learns to order that model's candidates for the held-out ratings.
    """

    enabled: bool = Field(True, description="ranker (ordering) and, below, the dedicated rating model")
    candidates: int = Field(100, ge=10, description="retrieval candidates the ranker re-scores per user")
    collab_candidates: int = Field(50, ge=0, description="extra candidates from the item-item model, merged with the two-tower ones")
    holdout: Literal["auto", "temporal", "random"] = Field(
        "auto",
        description="what the ranker learns to order: auto (each user's latest ratings when the data has timestamps, a random "
        "share when it has none), temporal (each user's latest ratings: the next movies, what a service is judged on) or random "
        "(a random share of each user's ratings: the P2 research protocol); each wins on its own kind of split and loses on "
        "the other",
    )
    holdout_fraction: float = Field(0.2, gt=0, lt=0.9)
    negatives: int = Field(20, ge=0, description="random negatives per user list, besides the retrieval candidates")
    folds: int = Field(
        0, ge=0, le=20,
        description="K > 1: K cross-fitted lists per user (the holdout plus K-1 folds of the rest, each with a two-tower model trained without it); 0 or 1: the holdout list alone. "
        "Each extra fold trains one more two-tower model: a small gain in ranking quality for several times the ranker's training time",
    )
    ensemble: int = Field(
        3, ge=1, le=10,
        description="member nets, each trained on the lists of all but one group of users and scoring that group; their averaged order is shrunk towards the EASE order as far as those unseen lists ask",
    )
    # Default: an MLP over the features without cross layers or id embeddings. With about a
    # thousand training lists, cross layers and id embeddings make the learned order swing from
    # seed to seed; add them for data with many more users.
    hidden: list[int] = Field(default_factory=lambda: [128, 64], description="MLP widths ([]: a linear score)")
    cross_layers: int = Field(
        0, ge=0, le=6,
        description="DCN-v2 cross layers; none and no id embeddings by default: with few users they make the learned order swing from seed to seed; add them for data with many more users",
    )
    emb_dim: int = Field(0, ge=0, le=256, description="user/item id embedding size (0: no id embeddings)")
    id_dropout: float = Field(0.1, ge=0, lt=1, description="share of training ids replaced by the unknown row")
    dropout: float = Field(0.1, ge=0, lt=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    batch_size: int = Field(32, ge=1, description="user candidate lists per batch")
    epochs: int = Field(30, ge=1)
    patience: int = Field(4, ge=1)
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="share of ranker training users kept for early stopping")
    rating_weight: float = Field(0.5, ge=0, description="weight of the rating head's MSE next to the listwise loss")
    refit_rating_head: bool = Field(True, description="refit the linear rating head in closed form on the trained trunk")
    collab_lambda: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        "auto", description="EASE L2 weight of the item-item model (auto: the best of 125, 250, 500, 1000 on the ranker's held-out ratings, as the EASE baseline is tuned)"
    )
    collab_neighbors: int = Field(1024, ge=1, description="item-item weights kept per candidate item (fewer lose ranking quality against unpruned EASE; more cost memory in every serving worker)")
    collab_dense_max_items: int = Field(6000, ge=1, description="EASE over at most this many of the most-rated items (its inverse is cubic in them)")
    adjacent_window: int = Field(
        3, ge=0, description="movies up to this many places apart in a user's ratings in time order count as adjacent (ranking/sequence.py; 0: no adjacency feature)"
    )
    adjacent_neighbors: int = Field(128, ge=1, description="adjacency weights kept per movie")
    residual_feature: str | None = Field(
        None, description="the ranking score starts from this feature's order and learns corrections (None: plain net)"
    )
    exclude: list[Literal["content", "collab", "time", "ids"]] = Field(default_factory=list, description="feature groups left out (ablations)")
    max_users: int = Field(50_000, ge=10, description="users sampled for ranker training lists (bounds time on big data)")
    threads: int = Field(1, ge=1)
    rating: RatingConfig = Field(default_factory=RatingConfig)


class ServingConfig(_Section):
    """What the service does with the online state of a bundle trained with this config (read from
    the bundle's manifest at serve time; bundles without the section get these defaults)."""

    history_limit: int = Field(
        3000, ge=1,
        description="most recent ratings of a user that explanations and the ranker's features read (bounds their cost; "
        "every rated movie is still excluded as seen). Above the longest user history of ML-100K, ML-1M and ML-latest-small, "
        "so their answers do not change",
    )
    snapshot_every: int = Field(
        20_000, ge=1,
        description="after catching up, a worker writes a snapshot of the online state's overlay when more events than this "
        "were applied since the newest one; a start-up replays only the events after the snapshot",
    )


class TrainerConfig(_Section):
    """Lightning Trainer settings shared by the trained stages."""

    accelerator: str = "cpu"
    devices: int | str = 1
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    progress: bool = True


class Config(_Section):
    seed: int = Field(42, description="seeds every random choice: validation splits, sampling, initialisation, training order")
    content: ContentConfig = Field(default_factory=ContentConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    ranking: RankingConfig = Field(default_factory=RankingConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names the key."""


def _format_errors(source: str, err: ValidationError, overridden: Collection[str] = ()) -> str:
    """One line naming every bad key (dotted), whether it came from an override, and for a
    misspelt key the closest known name."""
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        related = (k for k in overridden if key == k or key.startswith(k + ".") or k.startswith(key + "."))
        origin = "override " if any(related) else ""
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + _suggest(e["loc"])
        parts.append(f"{origin}{key}: {msg}")
    return f"{source}: " + "; ".join(parts)


def _suggest(loc: tuple[Any, ...]) -> str:
    """' (did you mean 'epochs'?)' for a misspelt key, found among its section's fields."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        sub = field.annotation if field is not None else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return ""
        model = sub
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    if not all(p.strip() for p in parts):
        raise ConfigError(f"override {key!r}: empty key name")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Read a YAML config (or the defaults) and apply ``key=value`` overrides.

    Raises:
        ConfigError: unreadable YAML, an unknown key or a value of the wrong type.
    """
    tree: dict[str, Any] = {}
    source = "config"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config ({e.strerror or e})") from e
        except UnicodeDecodeError as e:  # a binary or non-UTF-8 file: say so instead of a traceback
            raise ConfigError(f"{path}: not a UTF-8 text file (byte {e.start}: {e.reason})") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from e
        except (RecursionError, ValueError) as e:  # "[[[[...]]]]" nesting; an int of 5,000 digits
            raise ConfigError(f"{path}: YAML nested too deeply or a number too long ({type(e).__name__})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        tree = loaded
    items = overrides.items() if isinstance(overrides, dict) else (
        _split_override(o) for o in (overrides or [])
    )
    overridden: set[str] = set()
    for key, value in items:
        _set_dotted(tree, key, value)
        overridden.add(key)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_errors(source, e, overridden)) from None


def _split_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except (yaml.YAMLError, RecursionError, ValueError):  # not YAML, absurdly nested or long: keep the text
        value = raw
    return key.strip(), value


def dump_config(config: Config) -> dict[str, Any]:
    return config.model_dump(mode="json")


DEFAULT_HEADER = """\
# movierec configuration: every key, with its value and what it does. configs/default.yaml is
# this file for the defaults, generated from movierec/core/config.py by
#   movierec config show > configs/default.yaml
# (tests/core/test_config.py keeps the two equal). Copy it and change what you need; unknown keys
# are errors. `movierec config show --config F --set k=v` prints the resolved result of any file.
"""


def _wrap_comment(text: str, indent: str, width: int = 100) -> list[str]:
    import textwrap

    return [f"{indent}# {line}" for line in textwrap.wrap(" ".join(text.split()), width=width - len(indent) - 2)]


def _yaml_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


def _render_section(model: BaseModel, indent: str) -> list[str]:
    lines: list[str] = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            doc = (type(value).__doc__ or "").strip()
            if doc:
                lines += _wrap_comment(doc.split("\n\n")[0], indent)
            lines.append(f"{indent}{name}:")
            lines += _render_section(value, indent + "  ")
            continue
        if field.description:
            lines += _wrap_comment(field.description, indent)
        lines.append(f"{indent}{name}: {_yaml_value(value if not isinstance(value, BaseModel) else value.model_dump(mode='json'))}")
    return lines


def render_yaml(config: Config | None = None, header: str = DEFAULT_HEADER) -> str:
    """Every key of ``config`` (the defaults when None) as YAML, each field's description and each
    section's summary kept as comments; :func:`load_config` reads it back to the same config."""
    config = config or Config()
    dumped = config.model_dump(mode="json")
    plain = config.model_validate(dumped)  # enum/tuple values as YAML-safe plain types
    return header + "\n".join(_render_section(plain, "")) + "\n"
