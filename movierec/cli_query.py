"""The query subcommands: ``recommend`` and ``similar`` on a bundle, and ``serve`` it over HTTP.
:mod:`movierec.cli` registers them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from movierec.cli_common import UsageError, emit


def serve_model(model: Path, host: str, port: int, workers: int) -> None:
    """Start uvicorn on a bundle (shared by ``serve`` and ``demo``)."""
    from serving.launcher import run_server

    run_server(model, host=host, port=port, workers=workers)


def _query_model(model: Path) -> object:
    """Load a bundle for a one-off query; a missing or broken bundle is a usage error."""
    from recommender import HybridRecommender

    if not (model / "manifest.json").is_file():
        raise UsageError(f"{model}: not a model bundle (no manifest.json); train one with movierec train")
    return HybridRecommender.load(model)


def _print_items(items: list[dict[str, object]]) -> None:
    for rank, item in enumerate(items, 1):
        year = f" ({item['year']})" if item.get("year") is not None else ""
        genres = "|".join(item.get("genres") or [])
        typer.echo(f"{rank:>3}. {item['title']}{year}  [{genres}]  id={item['item_id']}  score={item['score']:.4f}")
        for because in item.get("because") or []:
            typer.echo(f"       because: {because['reason']}")


def recommend(
    model: Annotated[Path, typer.Option(help="bundle directory from movierec train")],
    user: Annotated[str, typer.Option(help="user id as in the data")],
    k: Annotated[int, typer.Option(min=1, help="how many movies (up to the whole catalogue)")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help='print {"user_id", "items": [{"item_id", "title", "score"}]}')] = False,
    explain: Annotated[bool, typer.Option("--explain", help="name up to three of the user's rated movies behind each result")] = False,
    genres: Annotated[Optional[str], typer.Option(help="comma-separated genres; any of them qualifies")] = None,
    year_min: Annotated[Optional[int], typer.Option(help="earliest release year")] = None,
    year_max: Annotated[Optional[int], typer.Option(help="latest release year")] = None,
) -> None:
    """Top-k movies for a known user, movies they rated in training excluded."""
    import numpy as np

    from recommender import Filters, IdTypeError, UnknownIdError

    if year_min is not None and year_max is not None and year_min > year_max:
        raise UsageError(f"--year-min {year_min} is after --year-max {year_max}")
    m = _query_model(model)
    wanted = None
    if genres:
        known = {g.lower(): g for g in m.genre_vocab}
        names = [g.strip() for g in genres.split(",") if g.strip()]
        bad = [g for g in names if g.lower() not in known]
        if bad:
            raise UsageError(f"unknown genre {bad[0]!r}; known genres: {', '.join(m.genre_vocab)}")
        wanted = [known[g.lower()] for g in names] or None
    filters = Filters(genres=wanted, year_min=year_min, year_max=year_max)
    try:
        recs = m.recommend_user(user, k, filters=filters)
        u = m.user_idx(user)
        user_id = m.user_ids[u]
    except (UnknownIdError, IdTypeError) as e:  # a text id where ids are integers: one line, exit 2
        raise UsageError(str(e)) from None
    items = m.item_records(recs.item_idx, recs.scores)
    if explain:
        from recommender.explain import explain as explain_items

        lo, hi = m.retrieval.histories.indptr[u], m.retrieval.histories.indptr[u + 1]
        ratings = m.bundle.array("hist_ratings.npy")[lo:hi] if m.bundle.has("hist_ratings.npy") else None
        for item, because in zip(items, explain_items(m, m.retrieval.histories.items[lo:hi], ratings, recs.item_idx)):
            item["because"] = because
    user_id = user_id.item() if isinstance(user_id, np.generic) else user_id
    if as_json:
        keys = ("item_id", "title", "score", "because") if explain else ("item_id", "title", "score")
        emit({"user_id": user_id, "items": [{key: i[key] for key in keys} for i in items]})
        return
    typer.echo(f"top {len(items)} for user {user_id} (model {m.model_version}):")
    _print_items(items)


def similar(
    model: Annotated[Path, typer.Option(help="bundle directory from movierec train")],
    item: Annotated[str, typer.Option(help="item id as in the data")],
    k: Annotated[int, typer.Option(min=1, help="how many movies (up to the whole catalogue)")] = 10,
    by: Annotated[str, typer.Option(help="hybrid, content or collaborative")] = "hybrid",
    as_json: Annotated[bool, typer.Option("--json", help='print {"item_id", "items": [{"item_id", "title", "score"}]}')] = False,
) -> None:
    """Movies similar to one movie, by content vectors, two-tower vectors, or both."""
    from recommender import IdTypeError, UnknownIdError

    if by not in ("hybrid", "content", "collaborative"):
        raise UsageError(f"--by must be hybrid, content or collaborative, not {by!r}")
    m = _query_model(model)
    try:
        i = m.item_idx(item)
        recs = m.similar(item, k, by=by)  # type: ignore[arg-type]
    except (UnknownIdError, IdTypeError) as e:
        raise UsageError(str(e)) from None
    source = m.item_records([i])[0]
    items = m.item_records(recs.item_idx, recs.scores)
    if as_json:
        emit({"item_id": source["item_id"], "items": [{"item_id": x["item_id"], "title": x["title"], "score": x["score"]} for x in items]})
        return
    typer.echo(f"{len(items)} movies like {source['title']} (by {by}):")
    _print_items(items)


def serve(
    model: Annotated[Path, typer.Option(help="bundle directory, or a directory of bundles (newest is served)")],
    host: Annotated[str, typer.Option(help="address to bind (keep 127.0.0.1 unless behind a proxy)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port")] = 8000,
    workers: Annotated[
        Optional[int], typer.Option(min=1, max=64, help="worker processes (default: one per CPU core, at most 8); they share the online state")
    ] = None,
) -> None:
    """Serve the HTTP API and web page with uvicorn (admin key from MOVIEREC_API_KEY)."""
    import os

    from serving.launcher import run_server

    if not model.exists():
        raise UsageError(f"{model}: no such model directory")
    run_server(model, host=host, port=port, workers=workers or min(os.cpu_count() or 1, 8))
