# Sourced by scripts/demo and scripts/test: make sure .venv exists and holds
# bidwar with everything the demo and the tests need. Safe to run every time;
# it reinstalls only when setup.cfg or pyproject.toml changed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BIDWAR_VENV:-$ROOT/.venv}"
STAMP="$VENV/.bidwar-installed"

pick_python() {
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    echo "bidwar needs Python 3.11 or newer" >&2
    exit 1
}

# OpenCV's wheels need a few system libraries that slim images lack.
ensure_system_libraries() {
    if "$VENV/bin/python" -c 'import cv2' 2>/dev/null; then
        return
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing the system libraries OpenCV needs (libgl1, libglib2.0-0)" >&2
        apt-get update -qq && apt-get install -y -qq libgl1 libglib2.0-0 >/dev/null
    else
        echo "OpenCV cannot load: install libgl1 and libglib2.0-0" >&2
    fi
}

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating a virtual environment in $VENV" >&2
    "$(pick_python)" -m venv "$VENV"
fi

if [ ! -f "$STAMP" ] || [ "$ROOT/setup.cfg" -nt "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    echo "installing bidwar and its dependencies into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test,bench]"
    ensure_system_libraries
    touch "$STAMP"
fi
