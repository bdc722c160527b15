"""Build hook: compile the Go core into the gopy extension before packaging.

Everything else about the package lives in pyproject.toml. `pip install .`
runs `make build` with the Python doing the build, so the extension matches
that interpreter; the wheel is platform-specific because of it.
"""

import os
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

ROOT = os.path.dirname(os.path.abspath(__file__))


class BuildGoExtension(build_py):
    """Runs `make build` (gopy) before the ordinary build_py."""

    def run(self) -> None:
        if os.environ.get("NPSFUSE_SKIP_GO_BUILD") != "1":
            subprocess.check_call(["make", "-C", ROOT, "build", f"PYTHON={sys.executable}"])
        super().run()


class BinaryDistribution(Distribution):
    """The package carries a compiled extension."""

    def has_ext_modules(self) -> bool:
        return True


setup(cmdclass={"build_py": BuildGoExtension}, distclass=BinaryDistribution)
