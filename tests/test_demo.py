"""`make demo` runs npsfuse.demo: it must work with every registered method."""

import npsfuse
from npsfuse import demo


def test_demo_prints_every_method(capsys) -> None:
    demo.main()
    out = capsys.readouterr().out
    for method in npsfuse.methods():
        assert method in out
    # Methods the NumPy reference knows agree with it to float32 rounding.
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in ("ties", "task_arithmetic", "linear", "dare_ties"):
            assert float(parts[2]) < 1e-5, line
