#!/usr/bin/env bash
# Installs the wheel `make wheel` built (dist/) into a fresh venv and runs the
# README's quick start against it on a PATH without Go (`make wheel-smoke`,
# .ci/run). Runtime dependencies (torch, numpy, ...) come from PyPI (see the
# wheelhouse below); nothing comes from the source tree: the checks run in a
# temporary folder with PYTHONPATH unset.
#
# Environment: PYTHON (its base interpreter makes the venv; default .venv's),
# WHEEL_DIR (default dist/), NPSFUSE_WHEELHOUSE (the dependencies' wheels,
# default ~/.cache/npsfuse-wheelhouse), KEEP=1 keeps the temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
WHEEL_DIR=${WHEEL_DIR:-$ROOT/dist}
WHEELHOUSE=${NPSFUSE_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/npsfuse-wheelhouse}

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
# The runtime dependencies (torch and its CUDA libraries: ~3 GB) come from PyPI
# once, into a wheelhouse kept on the machine (pip's own cache does not keep them
# here); later runs install from it offline, and fill it again when the wheel's
# requirements change.
pip=(env -u PYTHONPATH PATH="$work/venv/bin:$nogo" "$work/venv/bin/python" -m pip)
if ! "${pip[@]}" install -q --no-compile --no-index --find-links "$WHEELHOUSE" "$wheel" 2>/dev/null; then
	echo "wheelhouse $WHEELHOUSE lacks some dependency: downloading from PyPI"
	"${pip[@]}" download -q -d "$WHEELHOUSE" "$wheel"
	rm -f "$WHEELHOUSE"/npsfuse-*.whl
	"${pip[@]}" install -q --no-compile --no-index --find-links "$WHEELHOUSE" "$wheel"
fi
t1=$(date +%s)
echo "installed in $((t1 - t0)) s"

echo "== quick start (PATH=$work/venv/bin:$nogo)"
cp tools/wheel_smoke.py "$work/"
cd "$work"
env -u PYTHONPATH -u GOROOT -u GOPATH -u NPSFUSED_BIN PATH="$work/venv/bin:$nogo" \
	"$work/venv/bin/python" wheel_smoke.py "$work"
echo "quick start in $(($(date +%s) - t1)) s"
