"""``python -m movierec ARGS``: exactly the ``movierec`` console script (same exit codes, no
tracebacks for bad input), e.g. from a worktree without the installed script."""

from movierec.cli import main

main()
