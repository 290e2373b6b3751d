"""TF-IDF item vectors: the first model stage, and the one that works for movies nobody rated.

Each movie's text is split into fields (title words, genres, tags, a year/decade token,
description). One scikit-learn ``TfidfVectorizer`` is fitted per field, so genre tokens never
collide with title words and each field's share of the similarity is set by its weight. The
weighted blocks are stacked, rows L2-normalised (the sparse vectors, kept for exact cosine on
small catalogues), and TruncatedSVD reduces them to dense L2-normalised vectors for FAISS and
for the later stages (two-tower item features, ranker features, cold items).

scikit-learn is used only to *fit*. Everything ``transform`` needs (analyzer settings,
vocabulary, idf, SVD components) is kept as plain Python/NumPy data and saved as JSON and
``.npy`` without pickle, and ``transform`` is implemented here from those, reproducing
scikit-learn's tokenisation exactly. ``fit`` computes ``vectors`` through that same code path,
so transforming the training items after a save/load round trip gives bit-identical vectors.
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from movierec.core.artifacts import Bundle, BundleWriter
from movierec.core.config import ContentConfig
from movierec.core.index import normalize

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WORD_PATTERN = r"(?u)\b\w\w+\b"  # scikit-learn's default token_pattern
_MIN_PROJECTION = 1e-3
"""A unit sparse row whose SVD projection is shorter than this carries (almost) no direction the
SVD kept; its dense vector falls back to the catalogue centroid instead of amplified noise."""

FieldKind = Literal["words", "genres", "year"]


# ---- text cleaning shared by fit and transform ------------------------------------------------
def as_text(value: object, max_chars: int | None = None) -> str:
    """Any cell value -> str: None/NaN -> "", bytes decoded (UTF-8, else latin-1), long text cut.

    Both fit and transform go through this, so what the vectorizers saw at fit time is exactly
    what transform sees later.
    """
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        try:
            text = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            text = bytes(value).decode("latin-1")
    elif isinstance(value, str):
        text = value
    else:
        try:
            if pd.isna(value):  # type: ignore[call-overload]
                return ""
        except (TypeError, ValueError):
            pass
        text = str(value)
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars]
    return text


def strip_accents_unicode(s: str) -> str:
    """Same as ``sklearn.feature_extraction.text.strip_accents_unicode`` (NFKD, drop combining)."""
    try:
        s.encode("ASCII", errors="strict")
        return s
    except UnicodeEncodeError:
        normalized = unicodedata.normalize("NFKD", s)
        return "".join([c for c in normalized if not unicodedata.combining(c)])


def _genre_token(genre: str) -> str:
    """'Sci-Fi' -> 'genre:sci-fi': one whole token per genre, never split into words."""
    g = " ".join(strip_accents_unicode(as_text(genre).lower()).split())
    return f"genre:{g}" if g else ""


def genre_tokens(doc: str) -> list[str]:
    """Analyzer of the genre field (documents are genres joined by '|')."""
    seen: dict[str, None] = {}
    for g in doc.split("|"):
        t = _genre_token(g)
        if t:
            seen.setdefault(t, None)
    return list(seen)


def year_tokens(doc: str) -> list[str]:
    """Analyzer of the year field: the year, its decade and a decade shifted by five years.

    The shifted decade softens the hard decade boundary: 1977 and 1983 share ``era:1980``
    although they sit in different decades.
    """
    try:
        y = int(doc)
    except ValueError:
        return []
    return [f"year:{y}", f"decade:{y // 10 * 10}s", f"era:{(y + 5) // 10 * 10}"]


# ---- one field ---------------------------------------------------------------------------------
@dataclass
class FieldEncoder:
    """Analyzer settings, vocabulary and idf of one text field: enough to transform without
    scikit-learn.

    Attributes:
        name: the field (``title``, ``genres``, ``year``, ``tags``, ``description``).
        kind: ``words`` (scikit-learn's word analyzer) or a whole-token field (genres, year).
        weight: the block is scaled to this L2 norm before stacking.
        vocabulary: terms in column order.
        idf: (n_terms,) float64, scikit-learn's smoothed idf.
    """

    name: str
    kind: FieldKind
    weight: float
    lowercase: bool = True
    strip_accents: bool = True
    token_pattern: str = WORD_PATTERN
    ngram_range: tuple[int, int] = (1, 1)
    stop_words: tuple[str, ...] = ()
    sublinear_tf: bool = False
    min_df: int = 1
    max_features: int | None = None
    vocabulary: list[str] = field(default_factory=list)
    idf: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _lookup: dict[str, int] = field(default_factory=dict, repr=False)
    _regex: re.Pattern[str] | None = field(default=None, repr=False)
    _stop: frozenset[str] = field(default_factory=frozenset, repr=False)

    def __post_init__(self) -> None:
        self._lookup = {t: i for i, t in enumerate(self.vocabulary)}
        self._regex = re.compile(self.token_pattern)
        self._stop = frozenset(self.stop_words)

    @property
    def n_terms(self) -> int:
        return len(self.vocabulary)

    def analyze(self, doc: str) -> list[str]:
        """Tokens of one document, exactly as the fitted ``TfidfVectorizer`` produced them."""
        if self.kind == "genres":
            return genre_tokens(doc)
        if self.kind == "year":
            return year_tokens(doc)
        if self.lowercase:
            doc = doc.lower()
        if self.strip_accents:
            doc = strip_accents_unicode(doc)
        assert self._regex is not None
        tokens = [w for w in self._regex.findall(doc) if w not in self._stop]
        min_n, max_n = self.ngram_range
        if max_n == 1:
            return tokens
        out = list(tokens) if min_n == 1 else []
        start = max(min_n, 2)
        for n in range(start, min(max_n + 1, len(tokens) + 1)):
            for i in range(len(tokens) - n + 1):
                out.append(" ".join(tokens[i : i + n]))
        return out

    def sklearn_vectorizer(self) -> Any:
        """An unfitted ``TfidfVectorizer`` with the same analyzer settings (fit time only)."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        common: dict[str, Any] = dict(
            sublinear_tf=self.sublinear_tf,
            min_df=self.min_df,
            max_features=self.max_features,
            norm="l2",
            use_idf=True,
            smooth_idf=True,
            dtype=np.float64,
        )
        if self.kind == "genres":
            return TfidfVectorizer(analyzer=genre_tokens, **common)
        if self.kind == "year":
            return TfidfVectorizer(analyzer=year_tokens, **common)
        return TfidfVectorizer(
            lowercase=self.lowercase,
            strip_accents="unicode" if self.strip_accents else None,
            token_pattern=self.token_pattern,
            ngram_range=self.ngram_range,
            stop_words=list(self.stop_words) or None,
            **common,
        )

    def transform(self, docs: list[str]) -> sp.csr_matrix:
        """(n_docs, n_terms) tf-idf rows, each L2-normalised then scaled to ``weight``."""
        indptr = [0]
        indices: list[int] = []
        counts: list[float] = []
        lookup = self._lookup
        for doc in docs:
            c = Counter(t for t in self.analyze(doc) if t in lookup)
            for term, n in sorted(c.items(), key=lambda kv: lookup[kv[0]]):
                indices.append(lookup[term])
                counts.append(n)
            indptr.append(len(indices))
        data = np.asarray(counts, dtype=np.float64)
        cols = np.asarray(indices, dtype=np.int64)
        if self.sublinear_tf:
            data = np.log(data) + 1.0
        data = data * self.idf[cols] if len(cols) else data
        x = sp.csr_matrix((data, cols, np.asarray(indptr, dtype=np.int64)), shape=(len(docs), self.n_terms))
        return _scale_rows(x, self.weight)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "weight": self.weight,
            "lowercase": self.lowercase,
            "strip_accents": self.strip_accents,
            "token_pattern": self.token_pattern,
            "ngram_range": list(self.ngram_range),
            "stop_words": sorted(self.stop_words),
            "sublinear_tf": self.sublinear_tf,
            "min_df": self.min_df,
            "max_features": self.max_features,
        }

    @classmethod
    def from_json(cls, meta: dict[str, Any], vocabulary: list[str], idf: np.ndarray) -> "FieldEncoder":
        if len(vocabulary) != len(idf):
            raise ValueError(
                f"content field {meta.get('name')!r}: vocabulary has {len(vocabulary)} terms but idf {len(idf)}"
            )
        return cls(
            name=meta["name"],
            kind=meta["kind"],
            weight=float(meta["weight"]),
            lowercase=bool(meta["lowercase"]),
            strip_accents=bool(meta["strip_accents"]),
            token_pattern=meta["token_pattern"],
            ngram_range=(int(meta["ngram_range"][0]), int(meta["ngram_range"][1])),
            stop_words=tuple(meta["stop_words"]),
            sublinear_tf=bool(meta["sublinear_tf"]),
            min_df=int(meta["min_df"]),
            max_features=meta["max_features"],
            vocabulary=list(vocabulary),
            idf=np.asarray(idf, dtype=np.float64),
        )


def _scale_rows(x: sp.csr_matrix, target: float) -> sp.csr_matrix:
    """Scale every nonzero row to L2 norm ``target``; empty rows stay empty."""
    x = x.tocsr()
    counts = np.diff(x.indptr)
    rows = np.repeat(np.arange(x.shape[0]), counts)
    norms = np.sqrt(np.bincount(rows, weights=x.data * x.data, minlength=x.shape[0]))
    factor = np.divide(target, norms, out=np.zeros_like(norms), where=norms > 0)
    x.data = x.data * np.repeat(factor, counts)
    return x


def _field_specs(config: ContentConfig) -> list[FieldEncoder]:
    """The fields and analyzer settings (untrained); weight 0 drops a field."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    stop = tuple(sorted(ENGLISH_STOP_WORDS))
    words = dict(min_df=config.min_df, max_features=config.max_features, stop_words=stop)
    specs = [
        FieldEncoder("title", "words", config.title_weight, ngram_range=(1, config.title_ngrams), **words),
        FieldEncoder("genres", "genres", config.genre_weight),
        FieldEncoder("year", "year", config.year_weight),
        # tags repeat (many users tag "sci-fi"): sublinear tf keeps repetition from dominating
        FieldEncoder("tags", "words", config.tag_weight, sublinear_tf=True, **words),
        FieldEncoder("description", "words", config.description_weight, sublinear_tf=True, **words),
    ]
    return [s for s in specs if s.weight > 0]


def field_documents(items: pd.DataFrame, max_chars: int) -> dict[str, list[str]]:
    """One string per item and field. Missing columns and cells become empty strings.

    Raises:
        ValueError: ``items`` is not a DataFrame.
    """
    if not isinstance(items, pd.DataFrame):
        raise ValueError(f"items must be a pandas DataFrame, got {type(items).__name__}")
    n = len(items)

    def column(name: str) -> list[object]:
        return list(items[name]) if name in items.columns else [None] * n

    def genres_doc(g: object) -> str:
        if isinstance(g, str):  # tolerate 'Action|Comedy' strings as well as lists
            parts = g.split("|")
        elif isinstance(g, (list, tuple, np.ndarray, pd.Series)):
            parts = [as_text(x) for x in g]
        else:
            parts = []
        return "|".join(p.replace("|", " ") for p in parts if p)

    def year_doc(y: object) -> str:
        try:
            if y is None or pd.isna(y):  # type: ignore[call-overload]
                return ""
            v = int(float(y))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return ""
        return str(v) if 1800 <= v <= 2200 else ""

    return {
        "title": [as_text(t, max_chars) for t in column("title")],
        "genres": [genres_doc(g) for g in column("genres")],
        "year": [year_doc(y) for y in column("year")],
        "tags": [as_text(t, max_chars) for t in column("tags")],
        "description": [as_text(t, max_chars) for t in column("description")],
    }


def _fit_projection(x: sp.csr_matrix, dim: int, seed: int) -> np.ndarray:
    """(d, n_features) float32 orthonormal components; d = dim capped by the data's rank.

    When the data has no more than ``dim`` independent directions (tiny catalogues, tests) an
    exact SVD keeps them all (lossless, and TruncatedSVD refuses n_components >= n_features);
    otherwise randomized TruncatedSVD.
    """
    n, f = x.shape
    if min(n, f) <= dim and n * f <= 50_000_000:
        _, s, vt = np.linalg.svd(x.toarray(), full_matrices=False)
        keep = s > max(s[0], 1e-30) * 1e-9 if len(s) else np.zeros(0, dtype=bool)
        comps = vt[keep]
        if len(comps) == 0:
            raise ValueError("content: the item texts have no usable terms")
        return np.ascontiguousarray(comps, dtype=np.float32)
    from sklearn.decomposition import TruncatedSVD

    d = max(1, min(dim, min(n, f) - 1))
    svd = TruncatedSVD(n_components=d, algorithm="randomized", n_iter=7, random_state=seed)
    svd.fit(x)
    return np.ascontiguousarray(svd.components_, dtype=np.float32)


def content_varies(items: pd.DataFrame, max_chars: int | None = None) -> bool:
    """Whether some field's text differs between two movies; when not (no item file, or every
    movie titled alike) every movie gets the same content vector."""
    return any(len(set(docs)) > 1 for docs in field_documents(items, max_chars).values())


# ---- the model -----------------------------------------------------------------------------------
class ContentModel:
    """Fitted TF-IDF + SVD content encoder: item table in, dense unit vectors out.

    Build with :meth:`fit` (needs scikit-learn) or :meth:`load` (plain arrays only).

    Attributes:
        encoders: one :class:`FieldEncoder` per field with a non-empty vocabulary.
        components: (dim, n_features) float32 SVD components.
        centroid: (dim,) float32 unit vector given to items with no known term.
        vectors: (n_items, dim) float32 L2-normalised vectors of the fitted items, item_idx order.
        sparse: (n_items, n_features) CSR float64 weighted tf-idf rows (unit norm or empty) for
            exact cosine on small catalogues.
        config: the :class:`ContentConfig` it was fitted with.
    """

    def __init__(
        self,
        encoders: list[FieldEncoder],
        components: np.ndarray,
        centroid: np.ndarray,
        config: ContentConfig,
        vectors: np.ndarray | None = None,
        sparse: sp.csr_matrix | None = None,
    ) -> None:
        n_features = sum(e.n_terms for e in encoders)
        if components.ndim != 2 or components.shape[1] != n_features:
            raise ValueError(
                f"content: SVD components have shape {components.shape}, expected (dim, {n_features})"
            )
        self.encoders = encoders
        self.components = np.ascontiguousarray(components, dtype=np.float32)
        # (n_features, dim) C-ordered copy: sparse @ dense with a transposed view makes scipy copy
        # the whole matrix on every call, which would dominate the cost of adding one movie
        self._components_t = np.ascontiguousarray(self.components.T)
        self.centroid = np.ascontiguousarray(centroid, dtype=np.float32)
        self.config = config
        self.vectors = vectors if vectors is not None else np.zeros((0, self.dim), np.float32)
        self.sparse = sparse if sparse is not None else sp.csr_matrix((0, n_features))

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.components.shape[1])

    @property
    def n_items(self) -> int:
        return int(len(self.vectors))

    def __repr__(self) -> str:
        fields = ", ".join(f"{e.name}:{e.n_terms}x{e.weight:g}" for e in self.encoders)
        return f"ContentModel({self.n_items:,} items, dim={self.dim}, fields=[{fields}])"

    # ---- fit ------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, items: pd.DataFrame, config: ContentConfig | None = None, seed: int = 42) -> "ContentModel":
        """Fit one TfidfVectorizer per field and the SVD on the catalogue ``items``.

        Args:
            items: the item table (``title``, ``year``, ``genres``, optional ``tags``,
                ``description``); row ``i`` becomes item_idx ``i``.
            config: weights, dimension, vocabulary limits.
            seed: randomized SVD seed.

        When no field yields any term (a ratings file without an item file, or titles that are
        all stop words) every movie gets the same vector: content then carries no signal and the
        collaborative stages do the work.
        """
        config = config or ContentConfig()
        t0 = time.perf_counter()
        docs = field_documents(items, config.max_text_chars)
        encoders: list[FieldEncoder] = []
        for spec in _field_specs(config):
            vec = spec.sklearn_vectorizer()
            try:
                vec.fit(docs[spec.name])
            except ValueError as e:  # empty vocabulary: field absent in this catalogue
                log.debug("content: field %r skipped (%s)", spec.name, e)
                continue
            vocab = [""] * len(vec.vocabulary_)
            for term, col in vec.vocabulary_.items():
                vocab[col] = term
            spec.vocabulary = vocab
            spec.idf = np.asarray(vec.idf_, dtype=np.float64)
            spec.__post_init__()
            encoders.append(spec)
        x = _stack(encoders, docs)
        if not encoders:
            log.warning(
                "content: none of the %d items has a title word, genre, year, tag or description; every movie "
                "gets the same content vector (give an item file for content-based similarity and cold movies)", len(items),
            )
            components = np.zeros((1, 0), np.float32)  # one constant direction: the centroid fallback
        else:
            from threadpoolctl import threadpool_limits

            # BLAS threads that spin against each other (or against other jobs on a small machine)
            # make the SVD's QR many times slower than one thread does
            with threadpool_limits(limits=config.fit_threads, user_api="blas"):
                components = _fit_projection(x, config.dim, seed)
        proj = np.asarray(x.astype(np.float32) @ components.T, dtype=np.float32)
        ok = np.linalg.norm(proj, axis=1) >= _MIN_PROJECTION
        centroid = normalize(proj[ok].mean(axis=0, keepdims=True))[0] if ok.any() else np.zeros(len(components), np.float32)
        if not np.any(centroid):
            centroid = np.zeros(len(components), np.float32)
            centroid[0] = 1.0
        model = cls(encoders, components, centroid, config)
        model.sparse = x
        model.vectors = model.dense_from_sparse(x)
        log.info(
            "content: fitted %d items, %d features -> dim %d in %.2fs (%d items without known terms)",
            len(items), x.shape[1], model.dim, time.perf_counter() - t0, int((~ok).sum()),
        )
        return model

    # ---- transform ------------------------------------------------------------------------------
    def transform_sparse(self, items: pd.DataFrame) -> sp.csr_matrix:
        """(n, n_features) weighted tf-idf rows with the fitted vocabulary (unit norm or empty)."""
        return _stack(self.encoders, field_documents(items, self.config.max_text_chars))

    def transform(self, items: pd.DataFrame) -> np.ndarray:
        """(n, dim) float32 L2-normalised vectors for any item rows, with the fitted vocabulary.

        Items with no known term (or whose terms the SVD did not keep) get the catalogue
        centroid: a valid unit vector, never zeros or NaN.
        """
        return self.dense_from_sparse(self.transform_sparse(items))

    def dense_from_sparse(self, x: sp.csr_matrix) -> np.ndarray:
        """(n, dim) unit vectors from :meth:`transform_sparse` rows (SVD projection, centroid fallback)."""
        proj = np.asarray(x.astype(np.float32) @ self._components_t, dtype=np.float32)
        weak = np.linalg.norm(proj, axis=1) < _MIN_PROJECTION
        proj[weak] = self.centroid
        return normalize(proj)

    # ---- persistence ----------------------------------------------------------------------------
    def save(self, writer: BundleWriter, prefix: str = "content/") -> None:
        """Write vocabularies and analyzer settings (JSON), idf/SVD/vectors (``.npy``)."""
        meta = {
            "format_version": FORMAT_VERSION,
            "dim": self.dim,
            "n_items": self.n_items,
            "config": self.config.model_dump(mode="json"),
            "fields": [e.to_json() for e in self.encoders],
        }
        writer.save_json(f"{prefix}meta.json", meta)
        for e in self.encoders:
            writer.save_json(f"{prefix}vocab_{e.name}.json", e.vocabulary)
            writer.save_array(f"{prefix}idf_{e.name}.npy", e.idf)
        writer.save_array(f"{prefix}components.npy", self.components)
        writer.save_array(f"{prefix}centroid.npy", self.centroid)
        writer.save_array(f"{prefix}vectors.npy", self.vectors)
        x = self.sparse.tocsr()
        writer.save_array(f"{prefix}sparse_data.npy", x.data)
        writer.save_array(f"{prefix}sparse_indices.npy", x.indices.astype(np.int64))
        writer.save_array(f"{prefix}sparse_indptr.npy", x.indptr.astype(np.int64))

    @classmethod
    def load(cls, bundle: Bundle, prefix: str = "content/") -> "ContentModel":
        """Rebuild from a bundle using plain arrays and JSON only (no scikit-learn objects).

        Raises:
            ValueError: the stored format version or array shapes do not match.
        """
        meta = bundle.json(f"{prefix}meta.json")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{bundle.path}: content format version {meta.get('format_version')!r} is not supported"
            )
        encoders = [
            FieldEncoder.from_json(
                f, bundle.json(f"{prefix}vocab_{f['name']}.json"), bundle.array(f"{prefix}idf_{f['name']}.npy")
            )
            for f in meta["fields"]
        ]
        components = bundle.array(f"{prefix}components.npy")
        vectors = bundle.array(f"{prefix}vectors.npy")
        n_features = sum(e.n_terms for e in encoders)
        indptr = bundle.array(f"{prefix}sparse_indptr.npy")
        sparse = sp.csr_matrix(
            (bundle.array(f"{prefix}sparse_data.npy"), bundle.array(f"{prefix}sparse_indices.npy"), indptr),
            shape=(len(indptr) - 1, n_features),
        )
        if vectors.shape != (meta["n_items"], meta["dim"]) or sparse.shape[0] != meta["n_items"]:
            raise ValueError(
                f"{bundle.path}: content vectors {vectors.shape} / sparse rows {sparse.shape[0]} do not match "
                f"{meta['n_items']} items x dim {meta['dim']}"
            )
        config = ContentConfig.model_validate(meta["config"])
        return cls(encoders, components, bundle.array(f"{prefix}centroid.npy"), config, vectors, sparse)


def _stack(encoders: list[FieldEncoder], docs: dict[str, list[str]]) -> sp.csr_matrix:
    """Weighted field blocks side by side, each row rescaled to unit norm (or left empty)."""
    blocks = [e.transform(docs[e.name]) for e in encoders]
    if not blocks:
        return sp.csr_matrix((len(next(iter(docs.values()), [])), 0), dtype=np.float64)
    return _scale_rows(sp.hstack(blocks, format="csr", dtype=np.float64), 1.0)
