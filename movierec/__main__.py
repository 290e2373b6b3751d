"""``python -m movierec ARGS``: the CLI without the installed console script (e.g. from a worktree)."""

from movierec.cli import app

app()
