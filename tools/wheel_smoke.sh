#!/usr/bin/env bash
# Installs the wheel `make wheel` built (dist/) into a fresh venv and runs the
# README's quick start against it on a PATH without Go (`make wheel-smoke`,
# .ci/run). Runtime dependencies (torch, numpy, ...) come from PyPI through uv;
# nothing comes from the source tree: the checks run in a temporary folder
# with PYTHONPATH unset.
#
# Environment: PYTHON (its base interpreter makes the venv; default .venv's),
# UV (the installer; default .venv's, from make venv), WHEEL_DIR (default
# dist/), KEEP=1 keeps the temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
WHEEL_DIR=${WHEEL_DIR:-$ROOT/dist}
UV=${UV:-$ROOT/.venv/bin/uv}
if [ ! -x "$UV" ]; then
	echo "wheel_smoke: no uv at $UV: run make venv" >&2
	exit 1
fi

# The venv's base interpreter, not the venv: the new one must not see .venv.
base=$("$PYTHON" -c 'import sys; print(sys._base_executable)')
tag=$("$base" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
shopt -s nullglob
wheels=("$WHEEL_DIR"/npsfuse-*-"$tag"-"$tag"-manylinux*_"$(uname -m)".whl)
if [ ${#wheels[@]} -ne 1 ]; then
	echo "wheel_smoke: want one $tag $(uname -m) manylinux wheel in $WHEEL_DIR, found ${#wheels[@]}: run make wheel" >&2
	exit 1
fi
wheel=${wheels[0]}

work=$(mktemp -d "${TMPDIR:-/tmp}/npsfuse-wheel-smoke.XXXXXX")
cleanup() { if [ "${KEEP:-}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT

# PATH without Go: drop every directory holding a `go` or `gopy`, the
# checkout's tool folders and its venv.
nogo=""
IFS=: read -ra dirs <<<"$PATH"
for d in "${dirs[@]}"; do
	case "$d" in "" | "$ROOT"/* | "$ROOT") continue ;; esac
	if [ -x "$d/go" ] || [ -x "$d/gopy" ]; then continue; fi
	nogo=${nogo:+$nogo:}$d
done
if env PATH="$nogo" sh -c 'command -v go' >/dev/null 2>&1; then
	echo "wheel_smoke: go is still on PATH=$nogo" >&2
	exit 1
fi

echo "== fresh venv ($base) + $(basename "$wheel")"
t0=$(date +%s)
"$base" -m venv "$work/venv"
# The runtime dependencies (torch and its CUDA libraries: ~5.5 GB unpacked)
# come from PyPI through uv's cache, which `make venv` filled: the venv's files
# are hard links to it, so this venv costs next to no disk and no download.
env -u PYTHONPATH UV_LINK_MODE="${UV_LINK_MODE:-hardlink}" \
	"$UV" pip install -q --python "$work/venv/bin/python" "$wheel"
t1=$(date +%s)
echo "installed in $((t1 - t0)) s"

echo "== quick start (PATH=$work/venv/bin:$nogo)"
cp tools/wheel_smoke.py "$work/"
cd "$work"
env -u PYTHONPATH -u GOROOT -u GOPATH -u NPSFUSED_BIN PATH="$work/venv/bin:$nogo" \
	"$work/venv/bin/python" wheel_smoke.py "$work"
echo "quick start in $(($(date +%s) - t1)) s"
