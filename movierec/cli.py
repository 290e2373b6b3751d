"""The ``movierec`` command line: thin subcommands, each calling one library function.

Input errors (bad data, config, bundle, parameters) print one line on stderr and exit with 2.
Heavy imports happen inside commands so ``movierec --help`` stays fast.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from movierec.cli_common import (
    TRAIN_EXTRA,
    UsageError,
    data_options,
    emit,
    load_model,
    needs_train_extra,
    progress,
)
from movierec.candidates import PARALLEL_MIN_USERS
from movierec.cli_query import recommend, serve, serve_model, similar

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Hybrid movie recommender: train, evaluate, generate candidates, serve.",
)
log = logging.getLogger("movierec")


def _setup_logging(verbose: bool = False) -> None:
    from movierec.core.logs import setup_logging

    setup_logging(verbose)


def _version(value: bool) -> None:
    if value:
        from movierec import __version__

        typer.echo(f"movierec {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging, library messages included")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    _setup_logging(verbose)


config_app = typer.Typer(no_args_is_help=True, help="Show the resolved configuration.")
app.add_typer(config_app, name="config")
from movierec.cli_state import state_app  # noqa: E402  (its own module: `movierec state ...`)
app.add_typer(state_app, name="state")


@config_app.command("show")
def config_show(
    config: Annotated[Optional[Path], typer.Option(help="YAML config (see configs/)")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override, e.g. --set retrieval.epochs=5")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of commented YAML")] = False,
) -> None:
    """Print every configuration key with its resolved value (defaults, then --config, then --set)."""
    from movierec.core.config import dump_config, load_config, render_yaml

    cfg = load_config(config, list(set_ or []))
    if as_json:
        emit(dump_config(cfg))
        return
    typer.echo(render_yaml(cfg), nl=False)


@app.command()
def split(
    out: Annotated[Path, typer.Option(help="folder to write train.csv, test.csv and items.csv")],
    data: Annotated[Optional[Path], typer.Option(help="MovieLens-style folder or .zip")] = None,
    ratings: Annotated[Optional[Path], typer.Option(help="plain CSV: user_id,item_id,rating[,timestamp]")] = None,
    items: Annotated[Optional[Path], typer.Option(help="plain CSV: item_id,title[,genres][,description]")] = None,
    protocol: Annotated[str, typer.Option(help="holdout (random share of each user's ratings), temporal (each user's latest), cold-items (every rating of some movies), or MovieLens 100K's own fold u1..u5, ua, ub")] = "holdout",
    test_size: Annotated[float, typer.Option(help="share held out for the test file, in (0, 1)")] = 0.2,
    seed: Annotated[int, typer.Option(help="random seed (holdout, cold-items)")] = 42,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Write a train/test split (user_id,item_id,rating,timestamp) and the catalogue, for train --ratings/--items, evaluate --test, compare and report --test."""
    from movierec.core.splits import ML100K_FOLDS, PROTOCOLS, write_split

    if protocol not in PROTOCOLS:
        raise UsageError(f"--protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    if not 0 < test_size < 1:
        raise UsageError(f"--test-size must be between 0 and 1 (exclusive), not {test_size:g}")
    if protocol in ML100K_FOLDS and (data is None or not (data / f"{protocol}.test").is_file()):
        raise UsageError(f"--protocol {protocol} is a MovieLens 100K fold: give --data with the ml-100k folder holding {protocol}.test")
    ds = data_options(data, ratings, items)
    summary = write_split(ds, out, protocol, test_size, seed, folder=data)
    if as_json:
        emit(summary)
        return
    typer.echo(
        f"{protocol} split of {ds}: {summary['train_ratings']:,} training ratings -> {out / 'train.csv'}, "
        f"{summary['test_ratings']:,} test ratings ({summary['test_users']:,} users, {summary['test_items']:,} movies) "
        f"-> {out / 'test.csv'}, {summary['items']:,} movies -> {out / 'items.csv'}"
    )


@app.command()
def compare(
    train: Annotated[Path, typer.Option(help="training ratings CSV (e.g. train.csv from movierec split)")],
    test: Annotated[Path, typer.Option(help="test CSV user_id,item_id[,rating], or MovieLens u1.test..u5.test, ua/ub.test")],
    items: Annotated[Optional[Path], typer.Option(help="item CSV (items.csv from movierec split)")] = None,
    models: Annotated[Optional[str], typer.Option(help="comma-separated: popular,ease,itemknn,rp3beta,svd,two-tower,movierec (default: all)")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML config for the movierec / two-tower pipeline")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="config override, e.g. --set retrieval.epochs=5")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list, one object per model")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="also write a bar chart PNG here")] = None,
) -> None:
    """Fit baselines and the hybrid on one training set, score them on one test file (full ranking, training items excluded), print one table."""
    needs_train_extra("compare")
    from movierec.compare import compare as run_compare, format_table, parse_models, plot as plot_rows, protocol_line
    from movierec.core.config import load_config
    from movierec.evaluation import read_test_file

    try:
        names = parse_models(models)
    except ValueError as e:
        raise UsageError(str(e)) from None
    cfg = load_config(config, list(set_ or []))
    frame = read_test_file(test)
    ds = data_options(None, train, items)
    note = protocol_line(ds, frame, cfg, names)
    rows = run_compare(ds, frame, names, config=cfg, show_progress=progress(as_json))
    if plot is not None:
        plot_rows(rows, plot)
    if as_json:
        emit(rows)
        return
    typer.echo(format_table(rows))
    if note is not None:
        typer.echo(note)
    if plot is not None:
        typer.echo(f"plot: {plot}")


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="folder to write ratings.csv, movies.csv, tags.csv, users.csv")],
    users: Annotated[int, typer.Option(min=2, help="number of users")] = 2_000,
    items: Annotated[int, typer.Option(min=2, help="number of movies")] = 1_500,
    ratings: Annotated[int, typer.Option(min=1, help="number of ratings")] = 100_000,
    seed: Annotated[int, typer.Option(help="random seed")] = 42,
) -> None:
    """Write the embedded synthetic MovieLens-shaped data set (deterministic for a seed)."""
    from movierec.core.synthetic import SynthSpec, write_synthetic

    spec = SynthSpec(n_users=users, n_items=items, n_ratings=ratings, seed=seed)
    summary = write_synthetic(out, spec)
    typer.echo(f"wrote {summary['ratings']:,} ratings, {summary['users']:,} users, {summary['items']:,} movies to {out}")


@app.command()
def download(
    name: Annotated[str, typer.Argument(help="ml-100k, ml-1m, ml-latest-small, ml-25m or ml-32m")],
    to: Annotated[Path, typer.Option(help="folder to unpack into")],
    base_url: Annotated[Optional[str], typer.Option(help="mirror to fetch from instead of GroupLens")] = None,
) -> None:
    """Fetch an official MovieLens zip, check its MD5 and unpack it atomically."""
    from movierec.core.download import download_dataset

    path = download_dataset(name, to, base_url=base_url)
    typer.echo(f"{name} ready at {path}")


@app.command("inspect")
def inspect_data(
    data: Annotated[Optional[Path], typer.Option(help="MovieLens-style folder or .zip")] = None,
    ratings: Annotated[Optional[Path], typer.Option(help="plain CSV: user_id,item_id,rating[,timestamp]")] = None,
    items: Annotated[Optional[Path], typer.Option(help="plain CSV: item_id,title[,genres][,description]")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Load a data set read-only and print its summary: sizes, rating scale, sparsity, genres."""
    import datetime as dt

    from movierec.core.data import describe
    from movierec.core.loaders import load_data

    if (data is None) == (ratings is None):
        raise UsageError("give either --data PATH or --ratings CSV [--items CSV]")
    if data is not None and items is not None:
        raise UsageError("--items goes with --ratings, not with --data")
    info = describe(load_data(data, ratings=ratings, items=items))
    if as_json:
        emit(info)
        return

    def day(ts: int | None) -> str:
        return dt.datetime.fromtimestamp(ts, dt.timezone.utc).date().isoformat() if ts else "unknown"

    typer.echo(
        f"{info['name']}: {info['ratings']:,} ratings, {info['users']:,} users, {info['items']:,} movies "
        f"({info['rated_items']:,} rated, {info['cold_items']:,} without ratings)"
    )
    mean = f" (mean {info['rating_mean']:.3f})" if info["rating_mean"] is not None else ""
    typer.echo(
        f"ratings {info['rating_min']:g}..{info['rating_max']:g}{mean}; "
        f"density {info['density']:.4%}, sparsity {info['sparsity']:.4%}"
    )
    typer.echo(f"rated between {day(info['first_rating'])} and {day(info['last_rating'])}")
    typer.echo(
        f"{info['items_with_tags']:,} movies with tags, {info['items_with_description']:,} with descriptions; "
        f"user features: {', '.join(info['user_features']) or 'none'}"
    )
    genres = ", ".join(f"{g} {n:,}" for g, n in info["genres"].items())
    typer.echo(f"genres ({len(info['genres'])}): {genres or 'none'}")


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="bundle directory to write (replaced atomically)")],
    data: Annotated[Optional[Path], typer.Option(help="MovieLens-style folder or .zip")] = None,
    ratings: Annotated[Optional[Path], typer.Option(help="plain CSV: user_id,item_id,rating[,timestamp]")] = None,
    items: Annotated[Optional[Path], typer.Option(help="plain CSV: item_id,title[,genres][,description]")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML config (see configs/)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="random seed (overrides the config)")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override, e.g. --set retrieval.epochs=5")] = None,
    feedback: Annotated[
        Optional[str],
        typer.Option(
            help="online state of the service to fold in (its folder, state.db, or a postgresql:// URL): every rating "
            "and added movie acknowledged so far, latest rating wins; serving this bundle with the same state replays "
            "only what came after, with another state all of it"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON (bundle, version, seconds, validation metrics)")] = False,
) -> None:
    """Train content vectors, the two-tower model, the index and the ranker; write one bundle."""
    import time

    needs_train_extra("train")
    from movierec.core.config import load_config
    from movierec.pipeline import train as train_pipeline

    overrides = list(set_ or [])
    if seed is not None:
        overrides.append(f"seed={seed}")
    if not progress(as_json):  # stdout holds the JSON alone; a log file gets no bars
        overrides.append("trainer.progress=false")
    cfg = load_config(config, overrides)
    from movierec.core.artifacts import check_replaceable

    check_replaceable(out)  # before any work: a folder that is not a bundle is never replaced
    state = None
    if feedback is not None:
        from recommender.state import StateError, open_existing

        try:  # before any work too, and nothing is created where there is no state
            state = open_existing(feedback)
        except StateError as e:
            raise UsageError(str(e)) from None
    ds = data_options(data, ratings, items)
    extra: dict[str, object] = {}
    if state is not None:
        from recommender.state import StateError
        from recommender.state_fold import fold_state

        try:
            ds, record = fold_state(ds, state)  # type: ignore[arg-type]
        except StateError as e:
            raise UsageError(str(e)) from None
        extra["state"] = record
        skipped = record["skipped"]
        note = f" ({skipped['ratings']} ratings and {skipped['movies']} added movies skipped: not in the data under their title)" if any(skipped.values()) else ""
        typer.echo(f"folded the online state up to event {record['seq']}{note}", err=as_json)
    t0 = time.perf_counter()
    path = train_pipeline(ds, out, cfg, manifest=extra)
    from movierec.core.artifacts import load_bundle

    manifest = load_bundle(path, verify=False).manifest
    m = manifest.get("metrics", {})
    seconds = time.perf_counter() - t0
    if as_json:
        emit({"bundle": str(path), "model_version": manifest["model_version"], "data": str(ds), "seconds": round(seconds, 1), "metrics": m})
        return
    typer.echo(f"trained on {ds} in {seconds:.1f}s")
    from movierec.core.metrics import metric_rows

    for stage, values in m.items():
        if isinstance(values, dict):
            typer.echo(f"  {stage}: " + "; ".join(f"{k} {v}" for k, v in metric_rows(values)))
    typer.echo(f"bundle: {path} (version {manifest['model_version']})")


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option(help="bundle directory from movierec train")],
    test: Annotated[Path, typer.Option(help="CSV with user_id,item_id[,rating] held out from training, or MovieLens u1.test..u5.test, ua/ub.test")],
    k: Annotated[int, typer.Option(min=1, help="cut-off")] = 10,
    no_rank: Annotated[bool, typer.Option("--no-rank", help="retrieval order, without the ranker")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Recall, NDCG, hit rate, MRR, precision and coverage at k on a held-out test file (and RMSE/MAE when it has ratings)."""
    from movierec.evaluation import evaluate_model, read_test_file

    frame = read_test_file(test)
    result = evaluate_model(load_model(model), frame, k=k, rank=not no_rank)
    if as_json:
        emit(result)
        return
    typer.echo(f"{result['users']:,} users, {result['pairs']:,} test pairs ({result['skipped_rows']} skipped), k={k}, {'ranked' if result['ranked'] else 'retrieval order'}")
    from movierec.core.splits import protocol_note

    note = protocol_note(result["protocol"]["test"], result["protocol"]["trained_for"])
    if note is not None:
        typer.echo(note)
    for name, value in result["metrics"].items():
        typer.echo(f"  {name}@{k}: {value:.4f}")
    if result.get("rating"):
        r = result["rating"]
        typer.echo(f"  rmse: {r['rmse']:.4f}  mae: {r['mae']:.4f}  ({r['pairs']:,} rated pairs, rating model)")


@app.command()
def candidates(
    model: Annotated[Path, typer.Option(help="bundle directory from movierec train")],
    out: Annotated[Path, typer.Option(help="parquet file to write (user_id, item_id, rank, score); with --parts a directory")],
    k: Annotated[int, typer.Option(min=1, help="candidates per user (up to the whole catalogue)")] = 100,
    users: Annotated[Optional[Path], typer.Option(help="CSV with a user_id column (default: every user)")] = None,
    no_rank: Annotated[bool, typer.Option("--no-rank", help="two-tower retrieval order, without the ranker")] = False,
    chunk_size: Annotated[int, typer.Option(min=1, help="users per chunk (memory stays flat; a worker takes whole chunks)")] = 2048,
    workers: Annotated[
        str,
        typer.Option(
            help="worker processes, or auto: one per usable core (CPU affinity), at most one per chunk of users, and one "
            f"process below {PARALLEL_MIN_USERS['ranked']:,} users ranked or {PARALLEL_MIN_USERS['retrieval']:,} with --no-rank, "
            "where starting the workers and merging their parts costs about what they save. "
            "The parts are merged, in order, into the one --out file (equal to one process's)"
        ),
    ] = "auto",
    parts: Annotated[
        bool, typer.Option("--parts", help="write --out as a directory of one parquet part per worker (part-00000.parquet ...), unmerged")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON (rows, users, workers, users_per_second, out)")] = False,
) -> None:
    """Top-k candidates for every user (or a list), items rated in training excluded."""
    import numpy as np

    from movierec.candidates import can_fork, choose_workers
    from retrieval.candidates import check_candidates_target, check_parts_target, write_candidates

    count = _workers_option(workers)
    if count is not None and count > 1 and not can_fork():
        raise UsageError("--workers above 1 forks processes, which this platform cannot")
    try:  # before any work: a file or folder that is not ours is never replaced
        check_parts_target(out) if parts else check_candidates_target(out)
    except FileExistsError as e:
        raise UsageError(str(e)) from None
    m = load_model(model)
    if users is not None:
        from movierec.evaluation import _to_index
        import pandas as pd

        if not users.is_file():
            raise UsageError(f"{users}: no such file")
        frame = pd.read_csv(users, dtype=str)
        if "user_id" not in frame.columns:
            from movierec.core.data import DataError

            raise DataError("required column is missing", path=users, column="user_id")
        idx = _to_index(frame["user_id"], pd.Index(m.user_ids))
        if (idx < 0).any():
            bad = frame["user_id"].iloc[int(np.flatnonzero(idx < 0)[0])]
            raise UsageError(f"{users}: unknown user_id {bad!r}")
        chosen = idx
    else:
        chosen = np.arange(len(m.user_ids))
    k = min(k, m.n_items)
    show = progress(as_json)
    count = choose_workers(len(chosen), chunk_size, rank=not no_rank) if count is None else count
    if count > 1 or parts:
        from movierec.candidates import write_candidates_parallel

        summary = write_candidates_parallel(
            m, chosen, out, k, rank=not no_rank, workers=count, chunk_size=chunk_size, parts=parts, show_progress=show
        )
    else:
        summary = write_candidates(
            lambda u: m.recommend_batch(u, k, rank=not no_rank),
            chosen,
            m.user_ids,
            m.items["item_id"].to_numpy(),
            out,
            chunk_size=chunk_size,
            show_progress=show,
        )
        summary["workers"] = 1
    if as_json:
        emit({**summary, "out": str(out)})
        return
    where = f"{out}/ in {summary['parts']} parts" if parts else str(out)
    typer.echo(
        f"wrote {summary['rows']:,} candidates for {summary['users']:,} users to {where} "
        f"({summary['users_per_second']:,.0f} users/s, {summary['workers']} worker{'s' if summary['workers'] > 1 else ''})"
    )


def _workers_option(value: str) -> int | None:
    """``--workers``: None for auto, else a count from 1 to 256."""
    if value.strip().lower() == "auto":
        return None
    try:
        count = int(value)
    except ValueError:
        raise UsageError(f"--workers: expected auto or a number, got {value!r}") from None
    if not 1 <= count <= 256:
        raise UsageError(f"--workers: expected auto or 1 to 256, got {count}")
    return count


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="port for the API and web page")] = 8000,
    host: Annotated[str, typer.Option(help="address to serve on")] = "127.0.0.1",
    no_serve: Annotated[bool, typer.Option("--no-serve", help="stop after the offline stages")] = False,
    out: Annotated[Path, typer.Option(help="folder for data, model, candidates and report")] = Path("demo-output"),
    users: Annotated[int, typer.Option(min=10, help="synthetic users")] = 2_000,
    items: Annotated[int, typer.Option(min=10, help="synthetic movies")] = 1_500,
    ratings: Annotated[int, typer.Option(min=100, help="synthetic ratings")] = 100_000,
    config: Annotated[Optional[Path], typer.Option(help="YAML config")] = None,
) -> None:
    """synth -> train -> evaluate -> print samples -> candidates -> serve, on the embedded data."""
    needs_train_extra("demo")
    from movierec.demo import run_demo

    result = run_demo(out, typer.echo, users=users, items=items, ratings=ratings, config_path=config)
    if no_serve:
        typer.echo(f"model at {result['model']}; serve it with: movierec serve --model {result['model']}")
        return
    typer.echo(f"serving on http://{host}:{port}/ (Ctrl+C to stop)")
    serve_model(result["model"], host=host, port=port, workers=1)


@app.command()
def tune(
    out: Annotated[Path, typer.Option(help="YAML file for the best config (loadable by train --config); trials go to the .csv beside it")],
    trials: Annotated[int, typer.Option(min=1, help="trials in the study (each trains the pipeline with capped epochs); rerunning resumes the study in OUT's .db and runs only the missing ones")] = 20,
    data: Annotated[Optional[Path], typer.Option(help="MovieLens-style folder or .zip (training data only)")] = None,
    ratings: Annotated[Optional[Path], typer.Option(help="plain CSV: user_id,item_id,rating[,timestamp]")] = None,
    items: Annotated[Optional[Path], typer.Option(help="plain CSV: item_id,title[,genres][,description]")] = None,
    config: Annotated[Optional[Path], typer.Option(help="base YAML config the search starts from")] = None,
    seed: Annotated[int, typer.Option(help="seeds the validation split, the sampler and training")] = 42,
    retrieval_epochs: Annotated[int, typer.Option(min=1, help="two-tower epochs per trial")] = 5,
    ranking_epochs: Annotated[int, typer.Option(min=1, help="ranker epochs per trial")] = 3,
    no_prune: Annotated[bool, typer.Option("--no-prune", help="train every trial to the end (default: stop trials whose retrieval score is below the median)")] = False,
) -> None:
    """Search the main hyper-parameters with Optuna on a validation split of the training data (study kept in SQLite, resumable, bad trials pruned)."""
    needs_train_extra("tune")
    from movierec.core.config import load_config
    from movierec.tune import METRIC, StudyError, tune as run_tune

    base = load_config(config)
    ds = data_options(data, ratings, items)
    try:
        result = run_tune(ds, trials, out, base=base, trial_epochs=(retrieval_epochs, ranking_epochs), seed=seed, prune=not no_prune)  # type: ignore[arg-type]
    except StudyError as e:
        raise UsageError(str(e)) from None
    typer.echo(f"best validation {METRIC}: {result.best_value:.4f}")
    for key, value in result.best_params.items():
        typer.echo(f"  {key} = {value}")
    typer.echo(f"config: {result.config_path}  trials: {result.trials_path}  study: {out.with_suffix('.db')} (rerun to resume)")


@app.command()
def report(
    model: Annotated[Path, typer.Option(help="bundle directory from movierec train")],
    out: Annotated[Path, typer.Option(help="HTML file to write (self-contained, images inline)")],
    quality: Annotated[Optional[Path], typer.Option(help="quality table JSON (movierec evaluate --json, or the demo's)")] = None,
    test: Annotated[Optional[Path], typer.Option(help="held-out CSV user_id,item_id[,rating]: evaluate here when no --quality")] = None,
) -> None:
    """One HTML report: the data, training curves, quality against baselines, the map of movies, samples."""
    needs_train_extra("report")
    from movierec.report import ReportError, quality_from_test, read_quality, write_report

    if not model.is_dir():
        raise UsageError(f"{model}: no such model directory")
    if quality is not None and test is not None:
        raise UsageError("give --quality JSON or --test CSV, not both")
    try:
        table = read_quality(quality) if quality is not None else None
    except ReportError as e:
        raise UsageError(str(e)) from None
    note = None
    if test is not None:
        table, note = quality_from_test(model, test)
    path = write_report(model, out, table, note)
    if note is not None:
        typer.echo(note)
    typer.echo(f"report: {path}")


app.command()(recommend)
app.command()(similar)
app.command()(serve)


def main() -> None:
    """Console entry point: maps input errors to one stderr line and exit code 2."""
    from movierec.core.artifacts import BundleError
    from movierec.core.config import ConfigError
    from movierec.core.data import DataError

    try:
        app(standalone_mode=False)
    except (DataError, ConfigError, BundleError, UsageError, FileNotFoundError, PermissionError) as e:
        typer.echo(f"error: {e}", err=True)
        raise SystemExit(2) from None
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in TRAIN_EXTRA:
            raise
        typer.echo(f"error: this command needs the [train] extra (missing: {e.name}): pip install 'movierec[train]'", err=True)
        raise SystemExit(2) from None
    except typer.Abort:
        typer.echo("aborted", err=True)
        raise SystemExit(130) from None
    except Exception as e:  # click usage errors
        import click

        # typer 0.29 raises from its own vendored click (typer._click), which is not a subclass
        # of the installed click's exceptions; both must map to exit code 2
        usage_errors: tuple[type[Exception], ...] = (click.exceptions.ClickException,)
        try:
            from typer._click.exceptions import ClickException as VendoredClickException

            usage_errors += (VendoredClickException,)
        except ImportError:  # typer versions that use the installed click
            pass
        if isinstance(e, usage_errors):
            e.show()  # type: ignore[attr-defined]
            raise SystemExit(2) from None
        if isinstance(e, click.exceptions.Exit):
            raise SystemExit(e.exit_code) from None
        raise


if __name__ == "__main__":
    main()
