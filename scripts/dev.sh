#!/usr/bin/env bash
# The two entry points of the README: `scripts/dev.sh studio` and `scripts/dev.sh test`.
# Both are idempotent: they create .venv inside the repo, install what is missing, then run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

# Which torch. Default: torch==2.13.0, which this project's machines resolve to the CPU build
# (an unpinned `torch` pulls a multi-GB CUDA build). A torch already in .venv is kept when
# TORCH_SPEC is unset, so a CUDA build installed by hand survives re-runs. TORCH_SPEC holds pip
# arguments, e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128".
DEFAULT_TORCH_SPEC="torch==2.13.0"

torch_args() {
    local spec=${TORCH_SPEC:-}
    if [ -z "$spec" ]; then
        if "$VENV/bin/python" -c 'import sys, torch; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(v < (2, 4))' 2>/dev/null; then
            return 0  # keep the torch that is there
        fi
        spec=$DEFAULT_TORCH_SPEC
        if command -v nvidia-smi >/dev/null 2>&1; then
            echo "note: an NVIDIA GPU is visible; for CUDA torch see docs/install.md (TORCH_SPEC)" >&2
        fi
    fi
    echo "$spec"
}

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV"
    fi
    local stamp="$VENV/.installed"
    local want
    want=$( (cat pyproject.toml scripts/dev.sh; echo "${TORCH_SPEC:-}") | sha256sum | cut -c1-16)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
        local spec
        spec=$(torch_args)
        if [ -n "$spec" ]; then
            local -a args
            read -r -a args <<< "$spec"  # word-split on purpose: TORCH_SPEC may carry --index-url
            "$VENV/bin/python" -m pip install --quiet "${args[@]}"
        fi
        "$VENV/bin/python" -m pip install --quiet -e ".[test]"
        echo "$want" > "$stamp"
    fi
}

browser() {
    # Browser tests drive Debian's chromium through Playwright (Playwright's own browser
    # download cannot work offline). Install it when we can (root + apt), else tests skip locally.
    if ! command -v chromium >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            apt-get update -qq >/dev/null && \
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || \
                echo "warning: could not install chromium; browser tests will skip (fail under CI)" >&2
        else
            echo "warning: chromium not found and not root; browser tests will skip (fail under CI)" >&2
        fi
    fi
}

case "${1:-}" in
    studio)
        shift
        setup
        exec "$VENV/bin/medisyn" studio "$@"
        ;;
    test)
        shift
        setup
        browser
        export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    setup)
        setup
        ;;
    *)
        echo "usage: scripts/dev.sh studio|test|setup [args...]" >&2
        exit 2
        ;;
esac
