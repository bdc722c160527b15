#!/usr/bin/env bash
# Runs the aarch64 wheel's native parts under emulation (`make wheel-check-aarch64`).
#
# No aarch64 machine here: qemu-user-static runs Debian 12's arm64 CPython 3.11
# (python3.11-minimal and its libraries, unpacked into a sysroot, not
# installed), which loads the wheel's _gonps extension and merges three tiny
# checkpoints through it (MergeCheckpoints, the path `npsfuse merge` takes);
# the output must equal the x86_64 `npsfuse merge` of the same config. The
# daemon binary must print its version. torch and the rest of the Python
# package are not exercised under emulation (too slow): tools/wheel_smoke.sh
# does that for x86_64 with the same Python sources.
#
# Needs root for apt (qemu-user-static, the arm64 architecture for downloads).
# Environment: PYTHON (host interpreter with npsfuse, torch, safetensors),
# WHEEL_DIR (default dist/).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
WHEEL_DIR=${WHEEL_DIR:-$ROOT/dist}
shopt -s nullglob
wheels=("$WHEEL_DIR"/npsfuse-*-cp311-cp311-manylinux*_aarch64.whl)
if [ ${#wheels[@]} -ne 1 ]; then
	echo "wheel_aarch64_check: want one cp311 aarch64 wheel in $WHEEL_DIR, found ${#wheels[@]}: run make wheel ARCH=aarch64" >&2
	exit 1
fi
sysroot=$ROOT/_build/wheel/arm64root
work=$ROOT/_build/wheel/aarch64-check

if ! command -v qemu-aarch64-static >/dev/null; then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >/dev/null
fi
if [ ! -x "$sysroot/usr/bin/python3.11" ]; then
	if ! dpkg --print-foreign-architectures | grep -qx arm64; then
		dpkg --add-architecture arm64
	fi
	apt-get update -qq
	rm -rf "$sysroot" && mkdir -p "$sysroot/debs"
	(cd "$sysroot/debs" && apt-get download -qq \
		libc6:arm64 libgcc-s1:arm64 zlib1g:arm64 libexpat1:arm64 libffi8:arm64 \
		libssl3:arm64 libbz2-1.0:arm64 liblzma5:arm64 \
		python3.11-minimal:arm64 libpython3.11-minimal:arm64 libpython3.11-stdlib:arm64)
	for d in "$sysroot"/debs/*.deb; do dpkg -x "$d" "$sysroot"; done
fi
arm() { qemu-aarch64-static -L "$sysroot" "$@"; }

rm -rf "$work" && mkdir -p "$work"
"$PYTHON" -m zipfile -e "${wheels[0]}" "$work/site"
# The extension as a package of its own: npsfuse/__init__ would import torch.
cp -r "$work/site/npsfuse/_native" "$work/gonps"
chmod +x "$work/gonps/npsfused"

echo "== $(arm "$work/gonps/npsfused" --version) (emulated)"
# The same merge with both wheels' extensions: x86_64 natively, aarch64 emulated.
x86=("$WHEEL_DIR"/npsfuse-*-cp311-cp311-manylinux*_x86_64.whl)
if [ ${#x86[@]} -ne 1 ]; then
	echo "wheel_aarch64_check: want one cp311 x86_64 wheel in $WHEEL_DIR too: run make wheel" >&2
	exit 1
fi
"$PYTHON" -m zipfile -e "${x86[0]}" "$work/x86_64-site"
mkdir -p "$work/x86_64-ext" "$work/aarch64-ext"
cp -r "$work/x86_64-site/npsfuse/_native" "$work/x86_64-ext/gonps"
mv "$work/gonps" "$work/aarch64-ext/gonps"
"$PYTHON" tools/wheel_native_merge.py data "$work"
"$PYTHON" tools/wheel_native_merge.py merge "$work" x86_64 "$work/x86_64-ext"
arm "$sysroot/usr/bin/python3.11" tools/wheel_native_merge.py merge "$work" aarch64 "$work/aarch64-ext"
"$PYTHON" tools/wheel_native_merge.py compare "$work"
