"""``movierec state``: maintenance of the online state (see ``recommender/state.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

state_app = typer.Typer(no_args_is_help=True, help="Maintain the online state (live ratings and added movies).")


@state_app.command("compact")
def compact(
    state: Annotated[str, typer.Option(help="the online state: its folder, its state.db, or a postgresql:// URL")],
    model: Annotated[Path, typer.Option(help="the bundle served with it (or a directory of bundles: the newest)")],
) -> None:
    """Write a snapshot of what MODEL serves after every event of STATE, so workers loading that
    bundle replay only the events recorded after it. Events are kept; nothing else changes."""
    import time

    from movierec.cli import UsageError
    from recommender import HybridRecommender, snapshots
    from recommender.state import StateError, open_state
    from recommender.state_db import state_url
    from serving.store import ReloadError, newest_bundle

    if "://" not in state:
        path = Path(state)
        db = path if path.suffix == ".db" else path / "state.db"
        if not db.is_file():
            raise UsageError(f"--state {state}: no online state there (no {db.name}); nothing was created")
    try:
        bundle = newest_bundle(model)
    except ReloadError as e:
        raise UsageError(f"--model {model}: {e}") from None
    try:
        store = open_state(state_url(state))
    except StateError as e:
        raise UsageError(f"--state: {e}") from None
    t0 = time.perf_counter()
    rec = HybridRecommender.load(bundle)
    loaded = time.perf_counter() - t0
    t0 = time.perf_counter()
    replayed = rec.catch_up(store)
    caught_up = time.perf_counter() - t0
    if rec._snapshot_thread is not None:  # the catch-up may have started one itself: let it finish
        rec._snapshot_thread.join()
    written = snapshots.write(rec, store, force=True)
    newest = snapshots.listing(store, rec)
    typer.echo(json.dumps({
        "bundle": str(bundle),
        "model_version": rec.model_version,
        "seq": rec.applied_seq,
        "events_replayed": replayed,
        "load_s": round(loaded, 3),
        "catch_up_s": round(caught_up, 3),
        "written": None if written is None else {"seq": written.seq, "bytes": written.size},
        "snapshots": [{"seq": s.seq, "bytes": s.size} for s in newest],
    }, indent=1))
