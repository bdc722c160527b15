"""The NumPy reference the tests compare the Go engine with.

It ships with the package (``npsfuse.reference``) so that ``make demo`` can
report agreement too; it is written from METHODS.md, independently of Go.
"""

from npsfuse.reference import *  # noqa: F403
from npsfuse.reference import METHODS, NORMALIZE_DEFAULT  # noqa: F401
