"""The thread count travels with the call (issue #13): ``npsfuse.merge(...,
threads=n)`` uses n goroutines for that call only, so merges with different
counts may run at once from several Python threads, and every result is the
same bits as a merge run alone."""

from __future__ import annotations

import threading

import npsfuse
import torch


def _inputs() -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(13)
    shapes = {"a.weight": (96, 700), "b.bias": (700,), "c.weight": (40, 33)}
    base = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    fts = [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()}
           for _ in range(3)]
    return base, fts


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_threads_per_call_concurrently(restore_threads: None) -> None:
    base, fts = _inputs()
    kw = {"density": 0.3, "seed": 7, "scope": "global"}
    alone = npsfuse.merge(base, fts, "dare_ties", threads=1, **kw)
    npsfuse.set_num_threads(1)  # the process default must not limit the calls below
    results: dict[int, dict[str, torch.Tensor]] = {}
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            for _ in range(3):
                results[n] = npsfuse.merge(base, fts, "dare_ties", threads=n, **kw)
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(_same(r, alone) for r in results.values())
    assert npsfuse.get_num_threads() == 1  # a call's count is not the process default


def test_threads_must_be_an_int() -> None:
    base, fts = _inputs()
    try:
        npsfuse.merge(base, fts, "ties", threads="many")  # type: ignore[arg-type]
    except (ValueError, TypeError):
        pass
    else:  # pragma: no cover
        raise AssertionError("threads='many' was accepted")
