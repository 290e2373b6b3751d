#!/usr/bin/env bash
# Min-versions job: installs the lowest versions pyproject.toml declares (base + [train] + [test],
# pinned with == by .ci/min_versions.py) in a second venv and runs a smoke subset of the tests,
# so every declared floor is one that installs and works.
#   bash .ci/min_versions.sh install VENV   # network-bound: .ci/run starts it beside `make test`
#   bash .ci/min_versions.sh test VENV      # the smoke subset on that venv
set -euo pipefail
cd "$(dirname "$0")/.."
phase="$1"
venv="$2"
case "$phase" in
  install)
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -qq --upgrade pip
    # torch's floor is the CPU build the Makefile installs (see its comment)
    "$venv/bin/pip" install -qq "torch==2.13.0+cpu" || "$venv/bin/pip" install -qq "torch==2.13.0+cpu" --index-url https://download.pytorch.org/whl/cpu
    python3 .ci/min_versions.py train test > "$venv/min-requirements.txt"
    echo "min-versions: installing $(tr '\n' ' ' < "$venv/min-requirements.txt")"
    "$venv/bin/pip" install -qq -r "$venv/min-requirements.txt"
    ;;
  test)
    # the project itself here, not beside `make test`: an editable build writes into the checkout
    "$venv/bin/pip" install -qq --no-deps -e .
    "$venv/bin/python" -m pytest -q -p no:cacheprovider \
      tests/core/test_config.py tests/core/test_data.py tests/core/test_splits.py tests/core/test_metrics.py \
      tests/core/test_baselines.py tests/core/test_report.py tests/core/test_tune.py \
      tests/cli/test_cli_tools.py tests/cli/test_base_install.py tests/cli/test_cli.py \
      tests/serving/test_schemathesis.py tests/serving/test_state_api.py tests/reliability/test_state_store.py
    ;;
  *)
    echo "usage: $0 install|test VENV" >&2
    exit 2
    ;;
esac
