"""The platform wheel ``make wheel`` builds (dist/), inspected file by file.

Skipped when no wheel for this interpreter and architecture is in dist/ (``make test``
runs before ``make wheel``); ``.ci/run`` runs this file again after ``make wheel``
with ``NPSFUSE_REQUIRE_WHEEL=1``, which turns the skip into a failure. Whether the
wheel installs and works without Go is ``tools/wheel_smoke.sh``'s check.
"""

from __future__ import annotations

import io
import os
import platform
import stat
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WHEEL_DIR = Path(os.environ.get("WHEEL_DIR", ROOT / "dist"))
PY_TAG = f"cp{sys.version_info[0]}{sys.version_info[1]}"
#: The wheel's architecture: this machine's, or ``$WHEEL_ARCH`` (the aarch64 wheel is
#: cross-built on x86_64 and inspected here too).
ARCH = os.environ.get("WHEEL_ARCH", platform.machine())
EXT_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX").replace(platform.machine(), ARCH)
NATIVE = "npsfuse/_native/"
#: manylinux2014's glibc: no symbol of a newer version may be needed.
MAX_GLIBC = (2, 17)


def _find_wheel() -> Path:
    found = sorted(WHEEL_DIR.glob(f"npsfuse-*-{PY_TAG}-{PY_TAG}-manylinux*_{ARCH}.whl"))
    if len(found) == 1:
        return found[0]
    why = (
        f"{len(found)} npsfuse {PY_TAG} manylinux {ARCH} wheels in {WHEEL_DIR} "
        "(build one with `make wheel`)"
    )
    if os.environ.get("NPSFUSE_REQUIRE_WHEEL") == "1":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def wheel() -> Iterator[zipfile.ZipFile]:
    with zipfile.ZipFile(_find_wheel()) as z:
        yield z


def _dist_info(z: zipfile.ZipFile, name: str) -> str:
    (path,) = [n for n in z.namelist() if n.endswith(f".dist-info/{name}")]
    return z.read(path).decode()


def _elf(z: zipfile.ZipFile, name: str):
    elffile = pytest.importorskip(
        "elftools.elf.elffile", reason="pyelftools (requirements-wheel.txt) reads the ELF files"
    )
    return elffile.ELFFile(io.BytesIO(z.read(name)))


def _dynamic(elf) -> dict[str, list[str]]:
    """DT_NEEDED, DT_RPATH and DT_RUNPATH entries of an ELF file."""
    out: dict[str, list[str]] = {"DT_NEEDED": [], "DT_RPATH": [], "DT_RUNPATH": []}
    dyn = elf.get_section_by_name(".dynamic")
    for tag in dyn.iter_tags() if dyn is not None else []:
        if tag.entry.d_tag == "DT_NEEDED":
            out["DT_NEEDED"].append(tag.needed)
        elif tag.entry.d_tag == "DT_RPATH":
            out["DT_RPATH"].append(tag.rpath)
        elif tag.entry.d_tag == "DT_RUNPATH":
            out["DT_RUNPATH"].append(tag.runpath)
    return out


def _glibc_versions(elf) -> set[tuple[int, ...]]:
    """The GLIBC_x.y symbol versions an ELF file needs."""
    out = set()
    sec = elf.get_section_by_name(".gnu.version_r")
    for _verneed, auxs in sec.iter_versions() if sec is not None else []:
        for aux in auxs:
            if aux.name.startswith("GLIBC_"):
                out.add(tuple(int(x) for x in aux.name[len("GLIBC_") :].split(".")))
    return out


def _check_machine(elf) -> None:
    want = {"x86_64": "EM_X86_64", "aarch64": "EM_AARCH64"}[ARCH]
    assert elf["e_machine"] == want, f"built for {elf['e_machine']}, not {ARCH}"


def test_tags(wheel):
    meta = Parser().parsestr(_dist_info(wheel, "WHEEL"))
    assert meta["Root-Is-Purelib"] == "false"
    tags = set(meta.get_all("Tag"))
    assert f"{PY_TAG}-{PY_TAG}-manylinux2014_{ARCH}" in tags
    assert all(t.startswith(f"{PY_TAG}-{PY_TAG}-manylinux") for t in tags), tags
    assert Parser().parsestr(_dist_info(wheel, "METADATA"))["Name"] == "npsfuse"


@pytest.mark.parametrize(
    "name",
    [
        f"_gonps{EXT_SUFFIX}",
        "go.py",
        "pybind.py",
        "__init__.py",
        "npsfused",
    ],
)
def test_native_files(wheel, name):
    assert NATIVE + name in wheel.namelist()


def test_package_files(wheel):
    names = set(wheel.namelist())
    for f in (
        "npsfuse/__init__.py",
        "npsfuse/py.typed",
        "npsfuse/cli.py",
        "npsfuse/_daemon_entry.py",
    ):
        assert f in names, f
    # no build leftovers, no second copy of the extension, nothing grafted by auditwheel
    assert not [n for n in names if "__pycache__" in n or n.endswith((".stamp", ".h", ".c", ".go"))]
    assert [n for n in names if n.endswith(".so")] == [NATIVE + f"_gonps{EXT_SUFFIX}"]
    assert not [n for n in names if n.startswith("npsfuse.libs/")]


def test_console_scripts(wheel):
    eps = _dist_info(wheel, "entry_points.txt")
    assert "npsfuse = npsfuse.cli:main" in eps
    assert "npsfused = npsfuse._daemon_entry:main" in eps


def test_daemon_is_executable_and_static(wheel):
    info = wheel.getinfo(NATIVE + "npsfused")
    assert stat.S_IMODE(info.external_attr >> 16) & 0o111, "npsfused lost its executable bit"
    elf = _elf(wheel, NATIVE + "npsfused")
    _check_machine(elf)
    assert not [s for s in elf.iter_segments() if s["p_type"] == "PT_INTERP"], "not static"
    assert _dynamic(elf)["DT_NEEDED"] == []


def test_extension_links(wheel):
    elf = _elf(wheel, NATIVE + f"_gonps{EXT_SUFFIX}")
    _check_machine(elf)
    dyn = _dynamic(elf)
    # An extension takes the interpreter's symbols: linking libpython breaks on static
    # Pythons; an rpath would point into the build machine.
    assert not [n for n in dyn["DT_NEEDED"] if n.startswith("libpython")], dyn
    assert set(dyn["DT_NEEDED"]) <= {"libc.so.6", "libpthread.so.0", "libm.so.6", "libdl.so.2"}
    assert dyn["DT_RPATH"] == [] and dyn["DT_RUNPATH"] == [], dyn
    need = _glibc_versions(elf)
    assert need and max(need) <= MAX_GLIBC, sorted(need)
