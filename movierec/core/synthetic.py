"""The embedded default data set: MovieLens-shaped ratings generated from planted latent tastes.

Why synthetic: the project must demo and test without network access or licensed data, yet the
data has to behave like the real thing so that every stage has something to learn. The generator
plants a latent space shared by genres, words and users:

* every genre has a latent vector; every word of the genre's vocabulary sits near it (plus its own
  direction, so words carry signal beyond the genre);
* an item picks 1-3 genres, draws title, tag and description words from those genres, and its
  latent vector is the normalised mix of genre vectors, word vectors and item noise. So the item
  text predicts who likes it (content signal) and co-rating patterns predict it too
  (collaborative signal);
* a user's taste vector mixes a few favourite genres (favourites depend a little on age, so user
  features carry signal) plus noise;
* the chance that user ``u`` rates item ``i`` is ``softmax_i(beta * taste_u . item_i + log pop_i)``
  with a Zipf-like popularity ``pop_i`` (long tail); the rating is
  ``mu + b_u + b_i + alpha * z_ui + noise`` rounded to the rating scale, where ``z_ui`` is the
  user's standardised affinity for the item.
* a fraction of items gets no ratings at all (cold items), as in real catalogues.

Scale: user parameters are drawn once (``O(n_users * dim)``), then users are processed in chunks
whose working set is ``chunk_users x n_items`` floats (one affinity, exp and cumulative sum per
user and item; the random draws are O(ratings), see :func:`_sample_user`), and each chunk is appended to
``ratings.csv`` with pyarrow. The random stream of every user is derived from ``(seed, user)``
alone, so the output does not depend on the chunk size. Memory stays flat from a few thousand to
tens of millions of ratings.

The output is the MovieLens latest-small layout (``ratings.csv``, ``movies.csv`` with a
``description`` column, ``tags.csv``, plus ``users.csv``), written to a temporary folder and
renamed into place, so :func:`movierec.core.loaders.load_dataset` reads it like any MovieLens folder.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from movierec.core.data import DataError

log = logging.getLogger(__name__)

# MovieLens latest genre list (without IMAX / "(no genres listed)") with rough base rates.
GENRES: dict[str, float] = {
    "Drama": 0.25, "Comedy": 0.20, "Thriller": 0.08, "Action": 0.08, "Romance": 0.07,
    "Adventure": 0.05, "Crime": 0.05, "Sci-Fi": 0.04, "Horror": 0.04, "Fantasy": 0.03,
    "Children": 0.03, "Mystery": 0.02, "Animation": 0.02, "Documentary": 0.02, "War": 0.01,
    "Musical": 0.01, "Western": 0.005, "Film-Noir": 0.005,
}

# Genre-flavoured vocabularies: titles, tags and descriptions are drawn from these, so the text
# of a movie says something about its place in the latent space.
GENRE_WORDS: dict[str, list[str]] = {
    "Drama": ["heart", "silence", "river", "family", "letters", "winter", "promise", "grace",
              "memory", "shadow", "home", "journey", "daughter", "truth"],
    "Comedy": ["wedding", "roommates", "vacation", "blunder", "party", "neighbours", "prank",
               "chaos", "dinner", "bachelor", "mixup", "weekend", "sitcom", "goofball"],
    "Thriller": ["conspiracy", "hostage", "pursuit", "witness", "deadline", "stranger",
                 "trap", "signal", "alibi", "paranoia", "countdown", "decoy", "fugitive", "cipher"],
    "Action": ["strike", "fury", "mercenary", "explosion", "commando", "showdown", "velocity",
               "rampage", "bullet", "heist", "squad", "renegade", "firepower", "vendetta"],
    "Romance": ["kiss", "sweetheart", "love", "paris", "moonlight", "roses", "valentine",
                "longing", "serenade", "honeymoon", "passion", "beloved", "courtship", "desire"],
    "Adventure": ["quest", "treasure", "jungle", "island", "expedition", "map", "voyage",
                  "temple", "compass", "pirates", "summit", "lost", "frontier", "odyssey"],
    "Crime": ["mob", "gangster", "detective", "cartel", "robbery", "racket", "precinct",
              "informant", "smuggler", "syndicate", "undercover", "felony", "godfather", "con"],
    "Sci-Fi": ["galaxy", "android", "starship", "planet", "robot", "cyborg", "quantum",
               "alien", "orbit", "nebula", "clone", "warp", "colony", "future"],
    "Horror": ["haunting", "zombie", "curse", "blood", "demon", "nightmare", "crypt",
               "possession", "slasher", "ghoul", "coven", "exorcism", "terror", "grave"],
    "Fantasy": ["dragon", "wizard", "kingdom", "sorcerer", "enchanted", "elves", "sword",
                "prophecy", "realm", "spell", "unicorn", "throne", "amulet", "giants"],
    "Children": ["puppy", "playground", "birthday", "toys", "friends", "school", "kitten",
                 "treehouse", "sleepover", "pony", "lullaby", "camp", "balloon", "buddies"],
    "Mystery": ["clue", "riddle", "manor", "disappearance", "secret", "enigma", "puzzle",
                "inspector", "whodunit", "locked", "vanishing", "butler", "suspect", "riddles"],
    "Animation": ["cartoon", "animated", "critters", "talking", "pixel", "doodle", "toon",
                  "claymation", "sidekick", "fable", "whiskers", "bubbles", "sketch", "paws"],
    "Documentary": ["portrait", "archive", "inside", "rise", "story", "chronicle", "truths",
                    "voices", "nature", "reportage", "untold", "behind", "record", "testimony"],
    "War": ["battalion", "trenches", "platoon", "front", "siege", "soldier", "invasion",
            "armistice", "bunker", "regiment", "warfare", "frontline", "general", "valor"],
    "Musical": ["song", "dance", "melody", "broadway", "rhythm", "chorus", "jazz", "tango",
                "overture", "singing", "ballroom", "harmony", "encore", "tap"],
    "Western": ["outlaw", "sheriff", "saloon", "ranch", "frontier", "gunslinger", "canyon",
                "cattle", "bandit", "stagecoach", "prairie", "rustler", "marshal", "posse"],
    "Film-Noir": ["noir", "femme", "dames", "rain", "cigarette", "double", "crossed",
                  "dark", "city", "alley", "venetian", "blinds", "smoke", "fatal"],
}

GENERIC_WORDS = ["night", "day", "last", "first", "big", "little", "return", "man", "woman",
                 "world", "time", "road", "blue", "red", "golden", "american", "city", "summer"]

OCCUPATIONS = [
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
    "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
    "retired", "salesman", "scientist", "student", "technician", "writer",
]

# Genres favoured by younger / older users: makes the user features predictive of taste.
_YOUNG_GENRES = ("Action", "Sci-Fi", "Animation", "Comedy", "Horror", "Fantasy")
_OLD_GENRES = ("Drama", "War", "Film-Noir", "Western", "Documentary", "Musical")

_T0 = 946_684_800  # 2000-01-01 UTC
_T1 = 1_609_459_200  # 2021-01-01 UTC


@dataclass(frozen=True)
class SynthSpec:
    """Size and shape of a synthetic data set.

    Args:
        n_users: users (ids 1..n_users); every user appears in ``users.csv``.
        n_items: movies (ids 1..n_items), including the cold ones.
        n_ratings: exact number of ratings written.
        seed: everything is a function of the spec, so the same spec gives the same bytes.
        dim: latent dimension of the planted tastes.
        rating_min, rating_max, rating_step: the rating scale (default 0.5-5 in half stars).
        cold_fraction: share of items that receive no ratings at all.
        zipf_exponent: popularity long tail; item at popularity rank r has weight r^-exponent.
        beta: how strongly taste drives *which* items a user rates (selection).
        alpha: how strongly taste drives the rating value (stars per standard deviation of
            the user's affinity, before scaling to the range).
        noise: standard deviation of the rating noise (in stars).
        tag_fraction: share of items that get tag rows in ``tags.csv``.
        item_noise, user_noise: per-dimension noise added to item / user latents: the part of
            taste that neither genres nor words explain (only collaborative signal finds it).
    """

    n_users: int = 2_000
    n_items: int = 1_500
    n_ratings: int = 100_000
    seed: int = 42
    dim: int = 16
    rating_min: float = 0.5
    rating_max: float = 5.0
    rating_step: float = 0.5
    cold_fraction: float = 0.05
    zipf_exponent: float = 0.9
    beta: float = 10.0
    alpha: float = 1.0
    noise: float = 0.5
    tag_fraction: float = 0.6
    item_noise: float = 0.15
    user_noise: float = 0.15

    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot work."""
        if self.n_users < 2 or self.n_items < 2:
            raise ValueError(f"need at least 2 users and 2 items, got {self.n_users} and {self.n_items}")
        if self.n_ratings < 1:
            raise ValueError(f"n_ratings must be >= 1, got {self.n_ratings}")
        if not 0 <= self.cold_fraction < 1:
            raise ValueError(f"cold_fraction must be in [0, 1), got {self.cold_fraction}")
        if not (self.rating_step > 0 and self.rating_max > self.rating_min):
            raise ValueError(
                f"bad rating scale {self.rating_min}..{self.rating_max} step {self.rating_step}"
            )
        if self.dim < 2:
            raise ValueError(f"dim must be >= 2, got {self.dim}")
        capacity = self.n_users * self.n_warm_items
        if self.n_ratings > capacity:
            raise ValueError(
                f"n_ratings={self.n_ratings:,} exceeds n_users x rated items = {capacity:,}; "
                "add users or items"
            )

    @property
    def n_cold_items(self) -> int:
        return int(round(self.n_items * self.cold_fraction))

    @property
    def n_warm_items(self) -> int:
        return self.n_items - self.n_cold_items


@dataclass
class _World:
    """Everything drawn before the ratings: item table, item/user latents, user activity."""

    items: pd.DataFrame
    item_vec: np.ndarray  # (n_items, dim) float32, unit norm
    log_pop: np.ndarray  # (n_items,) float32, -inf for cold items
    item_bias: np.ndarray  # (n_items,) float32
    item_year_start: np.ndarray  # (n_items,) int64 seconds: no rating before release
    users: pd.DataFrame
    user_vec: np.ndarray  # (n_users, dim) float32
    user_bias: np.ndarray  # (n_users,) float32
    activity: np.ndarray  # (n_users,) int64 ratings per user, sums to n_ratings
    t_start: np.ndarray  # (n_users,) int64 first rating time
    t_span: np.ndarray  # (n_users,) int64 seconds of activity
    tags: pd.DataFrame
    item_mean: np.ndarray | None = None  # (dim,) float64 mean of item_vec
    item_cov: np.ndarray | None = None  # (dim, dim) float64 covariance (ddof 0) of item_vec


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-12)).astype(np.float32)


def _allocate(weights: np.ndarray, total: int, floor: int, cap: int) -> np.ndarray:
    """Integer counts in [floor, cap] proportional to ``weights`` summing exactly to ``total``."""
    n = len(weights)
    counts = np.full(n, floor, dtype=np.int64)
    remaining = total - counts.sum()
    free = np.ones(n, dtype=bool)
    for _ in range(64):
        if remaining <= 0 or not free.any():
            break
        w = np.where(free, weights, 0.0)
        share = w / w.sum() * remaining
        add = np.floor(share).astype(np.int64)
        left = int(remaining - add.sum())
        if left > 0:  # largest remainders get the leftover units
            frac_order = np.argsort(-(share - add), kind="stable")
            add[frac_order[:left]] += 1
        counts += add
        over = np.maximum(counts - cap, 0)
        counts -= over
        free &= counts < cap
        remaining = int(total - counts.sum())
    if counts.sum() != total:
        raise ValueError(f"cannot place {total:,} ratings with at most {cap:,} per user")
    return counts


def _make_world(spec: SynthSpec) -> _World:
    """Draw items, their text, latents and popularity, and the users (all O(n) memory)."""
    rng = np.random.default_rng([spec.seed, 0])
    d = spec.dim
    genre_names = list(GENRES)
    g_prob = np.array([GENRES[g] for g in genre_names])
    g_prob /= g_prob.sum()
    genre_vec = _unit(rng.standard_normal((len(genre_names), d)))

    vocab = sorted({w for ws in GENRE_WORDS.values() for w in ws} | set(GENERIC_WORDS))
    word_pos = {w: i for i, w in enumerate(vocab)}
    word_vec = rng.standard_normal((len(vocab), d)) * 0.8
    for gi, g in enumerate(genre_names):  # genre words sit near their genre
        for w in GENRE_WORDS[g]:
            word_vec[word_pos[w]] += genre_vec[gi]
    word_vec = _unit(word_vec)

    n = spec.n_items
    n_genres = rng.choice([1, 2, 3], size=n, p=[0.45, 0.38, 0.17])
    titles: list[str] = []
    genres_col: list[str] = []
    descriptions: list[str] = []
    tag_words: list[list[str]] = []
    item_vec = np.empty((n, d), dtype=np.float32)
    noise = rng.standard_normal((n, d)) * spec.item_noise
    # One Python pass per *item* builds the text (catalogues are small next to the ratings).
    for i in range(n):
        gs = rng.choice(len(genre_names), size=n_genres[i], replace=False, p=g_prob)
        pool = [w for g in gs for w in GENRE_WORDS[genre_names[g]]]
        words = list(rng.choice(pool, size=4, replace=True))
        generic = GENERIC_WORDS[int(rng.integers(len(GENERIC_WORDS)))]
        form = int(rng.integers(4))
        w0, w1 = words[0].capitalize(), words[1].capitalize()
        title = [f"{w0} {w1}", f"The {w0} of {w1}", f"{generic.capitalize()} {w0}", f"{w0} and {w1}"][form]
        titles.append(title)
        genres_col.append("|".join(genre_names[g] for g in gs))
        descriptions.append(
            f"A {' and '.join(genre_names[g].lower() for g in gs)} film about {words[0]} "
            f"{words[2]} and {words[3]}."
        )
        tag_words.append(sorted(set(words[1:4])))
        used = [word_pos[w] for w in words[:4]] + ([word_pos[generic]] if form == 2 else [])
        item_vec[i] = genre_vec[gs].mean(0) * 1.0 + word_vec[used].mean(0) * 0.8 + noise[i]
    item_vec = _unit(item_vec)

    years = np.clip(np.round(2020 - rng.exponential(18.0, size=n)), 1920, 2019).astype(np.int64)
    items = pd.DataFrame(
        {
            "movieId": np.arange(1, n + 1, dtype=np.int64),
            "title": [f"{t} ({y})" for t, y in zip(titles, years)],
            "genres": genres_col,
            "description": descriptions,
        }
    )
    year_start = ((years - 1970) * 365.25 * 86400).astype(np.int64)

    # Zipf-like popularity over a random order of items; cold items get none at all.
    rank = rng.permutation(n) + 1
    log_pop = (-spec.zipf_exponent * np.log(rank)).astype(np.float32)
    cold = rng.choice(n, size=spec.n_cold_items, replace=False)
    log_pop[cold] = -np.inf
    # Popular movies are rated a little higher, as in MovieLens.
    item_bias = (0.25 * (np.log(rank.max()) - np.log(rank)) / np.log(max(rank.max(), 2))
                 + 0.35 * rng.standard_normal(n)).astype(np.float32)

    # Users: features, taste and activity.
    m = spec.n_users
    age = np.clip(np.round(rng.gamma(6.0, 5.5, size=m)) + 7, 7, 75).astype(np.int64)
    gender = np.where(rng.random(m) < 0.71, "M", "F")
    occupation = np.array(OCCUPATIONS)[rng.integers(len(OCCUPATIONS), size=m)]
    young = np.array([g in _YOUNG_GENRES for g in genre_names], dtype=float)
    old = np.array([g in _OLD_GENRES for g in genre_names], dtype=float)
    youth = np.clip((45 - age) / 25, -1, 1)[:, None]
    logits = np.log(g_prob)[None, :] + 0.9 * youth * (young - old)[None, :]
    gumbel = -np.log(rng.exponential(size=(m, len(genre_names))))
    fav = np.argsort(-(logits + gumbel), axis=1)[:, :3]
    fav_w = rng.dirichlet([2.0, 1.0, 0.6], size=m)
    user_vec = (genre_vec[fav] * fav_w[:, :, None]).sum(1) + spec.user_noise * rng.standard_normal((m, d))
    user_vec = user_vec.astype(np.float32)
    user_bias = (0.4 * rng.standard_normal(m)).astype(np.float32)
    activity_w = rng.lognormal(0.0, 1.0, size=m)
    floor = int(min(5, spec.n_ratings // m, spec.n_warm_items))
    activity = _allocate(activity_w, spec.n_ratings, floor, spec.n_warm_items)
    t_start = rng.integers(_T0, _T1 - 86400, size=m).astype(np.int64)
    t_span = np.minimum(rng.exponential(200 * 86400, size=m).astype(np.int64) + 60, _T1 - t_start)
    users = pd.DataFrame(
        {"userId": np.arange(1, m + 1, dtype=np.int64), "age": age, "gender": gender, "occupation": occupation}
    )

    # Tag rows: a share of the items get their tag words, each applied by a random user.
    tagged = np.flatnonzero(rng.random(n) < spec.tag_fraction)
    tag_item = np.repeat(tagged, [len(tag_words[i]) for i in tagged])
    tag_text = [w for i in tagged for w in tag_words[i]]
    tags = pd.DataFrame(
        {
            "userId": rng.integers(1, m + 1, size=len(tag_item)).astype(np.int64),
            "movieId": tag_item.astype(np.int64) + 1,
            "tag": tag_text,
            "timestamp": rng.integers(_T0, _T1, size=len(tag_item)).astype(np.int64),
        }
    )
    iv = item_vec.astype(np.float64)
    item_mean = iv.mean(0)
    item_cov = (iv - item_mean).T @ (iv - item_mean) / n
    return _World(items, item_vec, log_pop, item_bias, year_start, users, user_vec, user_bias,
                  activity, t_start, t_span, tags, item_mean, item_cov)


def _sample_user(
    g: np.random.Generator, cdf: np.ndarray, weights: np.ndarray, logits: np.ndarray, count: int
) -> np.ndarray:
    """``count`` distinct items drawn without replacement with probability ``softmax(logits)``
    (``weights = exp(logits - max)``, ``cdf`` their cumulative sum).

    Draw with replacement from the CDF and keep first occurrences: the distinct items, in the
    order they first appear, are exactly a sequential draw without replacement (Plackett-Luce,
    the distribution Gumbel-top-k samples). It costs O(count log n) per user after the one
    O(n) cumulative sum, instead of one random number per catalogue item. When repeats pile
    up (a heavy user who has taken most of the probability mass), the rest is drawn with
    Gumbel-top-k over the items not yet chosen, which continues the same sequential draw
    exactly.
    """
    total = cdf[-1]
    draws = np.empty(0, dtype=np.int64)
    chosen = np.empty(0, dtype=np.int64)
    mass = 0.0
    for _ in range(8):
        need = count - len(chosen)
        if need <= 0 or len(draws) > 8 * count + 256:
            break
        m = int(np.ceil(need * 1.25 / max(1.0 - mass, 1e-3))) + 16
        x = np.minimum(g.random(m) * total, np.nextafter(total, 0.0))  # never past the last item
        new = np.searchsorted(cdf, x, side="right")
        draws = np.concatenate([draws, new])
        _, first = np.unique(draws, return_index=True)
        chosen = draws[np.sort(first)]
        mass = float(weights[chosen].sum(dtype=np.float64) / total)
    if len(chosen) >= count:
        return chosen[:count]
    # -log(Exp(1)) is a standard Gumbel draw; a float32 Exp(1) draw can be exactly 0, whose log
    # would make a cold item's key NaN (-inf + inf)
    exp_noise = g.standard_exponential(len(logits), dtype=np.float32)
    keys = logits - np.log(np.maximum(exp_noise, np.finfo(np.float32).tiny))
    keys[chosen] = -np.inf
    need = count - len(chosen)
    rest = np.argpartition(-keys, need - 1)[:need]
    rest = rest[np.argsort(-keys[rest], kind="stable")]
    return np.concatenate([chosen, rest])


AFFINITY_BLOCK = 16
"""Users per matrix product of :func:`_affinity`, in blocks aligned to the user index."""


def _affinity(world: _World, users: np.ndarray) -> np.ndarray:
    """(b, n_items) float32 affinity of each user to every item.

    BLAS picks its kernels by the matrix shapes, and float32 sums then differ in the last bit
    between shapes (OpenBLAS does): a product over the whole chunk made
    the sampled items depend on the chunk size. Each user's row comes from the product over
    its fixed block of ``AFFINITY_BLOCK`` users instead, the same whatever the chunk.
    """
    out = np.empty((len(users), world.item_vec.shape[0]), dtype=np.float32)
    blocks = users // AFFINITY_BLOCK
    for b in np.unique(blocks):
        lo = int(b) * AFFINITY_BLOCK
        part = world.user_vec[lo : lo + AFFINITY_BLOCK] @ world.item_vec.T
        mine = blocks == b
        out[mine] = part[users[mine] - lo]
    return out


def _ratings_chunk(spec: SynthSpec, world: _World, users: np.ndarray) -> pa.Table:
    """Ratings of a block of users (0-based indices) as an Arrow table, best effort vectorised.

    Every random number of user ``u`` comes from ``default_rng([seed, 1, u])``, so the result for
    a user does not depend on which chunk it was generated in. The cost per user is one
    ``n_items``-long dot product, exp and cumulative sum, plus O(ratings) random draws.
    """
    counts = world.activity[users]
    if len(counts) == 0 or int(counts.max()) == 0:
        return _empty_table()
    affinity = _affinity(world, users)  # (b, n_items) float32
    # selection weights softmax(beta * affinity + log pop), unnormalised; cold items get 0
    logits = spec.beta * affinity + world.log_pop[None, :]
    logits -= logits.max(1, keepdims=True)
    weights = np.exp(logits)
    total = int(counts.sum())
    item = np.empty(total, dtype=np.int64)
    rating_noise = np.empty(total, dtype=np.float32)
    time_frac = np.empty(total, dtype=np.float32)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    # One generator per user (a Python step per user, never per rating) keeps chunking invisible.
    for r, u in enumerate(users):
        c = int(counts[r])
        if c == 0:
            continue
        g = np.random.default_rng([spec.seed, 1, int(u)])
        cdf = np.cumsum(weights[r], dtype=np.float64)
        lo, hi = bounds[r], bounds[r + 1]
        item[lo:hi] = _sample_user(g, cdf, weights[r], logits[r], c)
        g.standard_normal(out=rating_noise[lo:hi], dtype=np.float32)
        g.random(out=time_frac[lo:hi], dtype=np.float32)
    row = np.repeat(np.arange(len(users)), counts)
    # Taste enters the rating as a per-user z-score of the affinity over the whole catalogue
    # (mean and variance follow from the item vectors' mean and covariance, no n_items pass),
    # centred on the user's own selection: the rated items are already the ones the user likes,
    # and without the centring every rating would pile up at the top of the scale.
    uv = world.user_vec[users].astype(np.float64)
    mean = uv @ world.item_mean
    std = np.sqrt(np.maximum(np.einsum("bi,ij,bj->b", uv, world.item_cov, uv), 0.0))
    z_sel = (affinity[row, item] - mean[row]) / (std[row] + 1e-6)
    z_sel -= (np.bincount(row, weights=z_sel, minlength=len(users)) / np.maximum(counts, 1))[row]
    # Centre near 3.5 of 5 and scale everything to the configured range.
    scale = (spec.rating_max - spec.rating_min) / 4.5
    mu = spec.rating_min + 0.66 * (spec.rating_max - spec.rating_min)
    value = (mu + scale * (world.user_bias[users][row] + world.item_bias[item]
             + spec.alpha * z_sel + spec.noise * rating_noise))
    steps = np.round((value - spec.rating_min) / spec.rating_step)
    n_steps = np.floor((spec.rating_max - spec.rating_min) / spec.rating_step + 1e-9)
    rating = spec.rating_min + np.clip(steps, 0, n_steps) * spec.rating_step
    start = world.t_start[users][row]
    ts = start + (time_frac.astype(np.float64) * world.t_span[users][row]).astype(np.int64)
    ts = np.maximum(ts, world.item_year_start[item])
    # users are already in order; sort each user's items by movieId
    order = np.lexsort((item, row))
    return pa.table(
        {"userId": users[row][order].astype(np.int64) + 1, "movieId": item[order] + 1,
         "rating": np.round(rating[order], 6), "timestamp": ts[order]},
        schema=_RATINGS_SCHEMA,
    )


_RATINGS_SCHEMA = pa.schema(
    [("userId", pa.int64()), ("movieId", pa.int64()), ("rating", pa.float64()), ("timestamp", pa.int64())]
)


def _empty_table() -> pa.Table:
    return _RATINGS_SCHEMA.empty_table()


def _default_chunk_users(n_items: int) -> int:
    """Users per chunk so that one (chunk x n_items) float32 array is about 16 MB."""
    return int(max(1, min(4096, (4 << 20) // max(n_items, 1))))


def write_synthetic(
    out: str | Path, spec: SynthSpec | None = None, chunk_users: int | None = None
) -> dict[str, int | float]:
    """Write the synthetic data set to ``out`` in the latest-small layout, atomically.

    Args:
        out: target folder. An existing folder is replaced only if it is empty or holds a
            previous data set (has a ``ratings.csv``); anything else is refused.
        spec: sizes and seed (defaults: :class:`SynthSpec`).
        chunk_users: users generated per chunk (memory knob; the output does not depend on it).

    Returns:
        counts: ``ratings``, ``users``, ``items``, ``cold_items``, ``tags`` and ``seconds``.

    Raises:
        ValueError: an impossible spec (e.g. more ratings than user x item pairs).
        DataError: ``out`` exists and is not a data folder we may replace.
    """
    spec = spec or SynthSpec()
    spec.validate()
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "ratings.csv").exists())):
        raise DataError("exists and is not a movierec data folder; refusing to overwrite", path=out)
    t0 = time.perf_counter()
    world = _make_world(spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        step = chunk_users or _default_chunk_users(spec.n_items)
        n_written = 0
        with pacsv.CSVWriter(tmp / "ratings.csv", _RATINGS_SCHEMA) as writer:
            for lo in range(0, spec.n_users, step):
                users = np.arange(lo, min(lo + step, spec.n_users))
                table = _ratings_chunk(spec, world, users)
                writer.write_table(table)
                n_written += table.num_rows
                log.debug("synth: %d/%d users, %d ratings", users[-1] + 1, spec.n_users, n_written)
        world.items.to_csv(tmp / "movies.csv", index=False)
        world.tags.to_csv(tmp / "tags.csv", index=False)
        world.users.to_csv(tmp / "users.csv", index=False)
        (tmp / "spec.json").write_text(json.dumps(asdict(spec), indent=1))
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t0
    log.info("synth: wrote %d ratings, %d users, %d movies (%d cold) to %s in %.1fs",
             n_written, spec.n_users, spec.n_items, spec.n_cold_items, out, seconds)
    return {"ratings": n_written, "users": spec.n_users, "items": spec.n_items,
            "cold_items": spec.n_cold_items, "tags": len(world.tags), "seconds": seconds}


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an old ``out`` is moved aside first and removed afterwards."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{time.time_ns()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
