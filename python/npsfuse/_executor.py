"""Population-parallel evaluation of a search's candidates on Ray (issue 17).

Every search npsfuse runs is driven by an engine session that hands out
candidates and takes their scores (ask/tell): ``gocore/nps.Session`` for
NPS-Pruning, fusion and :func:`npsfuse.search_merge`, ``gocore/evolve.Session``
for :class:`npsfuse.Evolver`. With ``executor=`` the driver keeps that session
and fans the candidates of one ask out to Ray actors:

* **Workers hold the data, candidates travel small.** A search ships its
  *job* (base model, fine-tuned models or task vectors, or the Evolver's
  population, plus the user's ``evaluate``) to every worker once, through
  the Ray object store. A candidate is then a small description — NPS
  subspace weights, fusion λ, merge keyword arguments, or the Evolver
  session's JSON state whose next trial the worker builds — and the worker
  builds the model locally with the npsfuse kernels and returns one score.
  Model weights never travel per candidate.
* **Same run as in-process.** The driver tells the scores in the session's
  ask order, so a seed gives the same history and best candidate with or
  without Ray (the kernels are bit-identical whatever the thread count).
* **Evolver.** The engine's replacement rule decides what may run together.
  The DE strategies (``rand/1/bin``, ``best/1/bin``,
  ``current-to-best/1/bin``) replace *generationally* (synchronous rule): a
  generation's trials are all planned against the population at its start
  and accepted ones replace their parents when its last score is told, so
  the whole generation is scored concurrently. ``"evolver"`` and the merger
  mode replace *immediately* (the next trial sees an accepted one): there
  the driver evaluates a window of trials speculatively, each planned as if
  the ones before it were rejected, and keeps a result only while no trial
  before it was accepted and its description equals the one the session
  asks for; the rest are evaluated again after the population changed. The
  results equal the in-process run; the speed-up is larger the rarer
  acceptances are. Workers mirror the population: after every replacement
  the driver sends them the state it was planned in and the replaced
  parents, and each rebuilds those trials locally.
* **Faults.** A worker that dies (``ray.kill``, a lost node, an OOM kill)
  has its candidate re-run on another worker; a pool npsfuse created starts
  a replacement actor (up to ``max_restarts``), a pool the user built
  shrinks. Errors raised by ``evaluate`` are not faults: they come back to
  the driver and are raised there, as in-process (every search's policy,
  :mod:`npsfuse._vocab`; a NaN score is a failed candidate).

The public names are in :mod:`npsfuse.executors`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import operator
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ._extras import need

if TYPE_CHECKING:  # pragma: no cover
    from ._vocab import FailedScores
    from .evolve import Evolver

__all__ = ["RayExecutor", "drive_session", "new_worker"]


def _ray(what: str = "executor='ray'") -> Any:
    return need("ray", "ray", what)


# ----------------------------------------------------------------- outcome --


class _Outcome(NamedTuple):
    """A worker's answer for one candidate: a score or the error ``evaluate`` raised."""

    score: Any = None
    error: BaseException | None = None

    def unwrap(self, _: Any = None) -> Any:
        """The score, or raise the error ``evaluate`` raised."""
        if self.error is not None:
            raise self.error
        return self.score


def _picklable(exc: BaseException) -> BaseException:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # an exception that cannot travel is reported by its text
        return RuntimeError(f"evaluate raised {type(exc).__name__}: {exc}")


# -------------------------------------------------------------------- jobs --


class _Job:
    """What a worker holds for one search: ``build(desc) -> state dict`` and
    ``evaluate``. ``build`` may have an ``open()`` run once on the worker."""

    #: Whether the job changes during the search (then a replacement worker
    #: gets a fresh snapshot instead of the first one).
    stateful = False

    def __init__(self, build: Callable[[Any], Any], evaluate: Callable[[Any], Any]) -> None:
        self.build = build
        self.evaluate = evaluate

    def open(self) -> None:
        """Prepare the worker side (decompositions live in Go memory there)."""
        getattr(self.build, "open", lambda: None)()

    def run(self, desc: Any) -> _Outcome:
        """Build the candidate ``desc`` and evaluate it."""
        sd = self.build(desc)
        try:
            return _Outcome(self.evaluate(sd))
        except Exception as exc:  # user code: the driver decides what it means
            return _Outcome(error=_picklable(exc))

    def sync(self, msg: Any) -> None:
        """Apply a change of the driver's state (stateful jobs)."""

    def close(self) -> None:
        """Free what :meth:`open` took."""
        getattr(self.build, "close", lambda: None)()


class _Opened:
    """A build that opens its engine object on the worker (:meth:`_Worker.setup`
    runs :meth:`open` before it builds anything); the driver only pickles it."""

    _obj: Any = None

    def open(self) -> None:
        self._obj = self._open()

    def close(self) -> None:
        if self._obj is not None:
            self._obj.close()

    def _open(self) -> Any:  # pragma: no cover - every subclass opens
        raise NotImplementedError


class _NPSBuild(_Opened):
    """θ₀ + τ_NPS(w) on a worker: its own decomposition, the driver's seed."""

    def __init__(self, base: Any, finetuned: Any, config: Mapping[str, Any]) -> None:
        self.base, self.finetuned, self.config = base, finetuned, dict(config)

    def _open(self) -> Any:
        from .nps._search import Search

        return Search(self.base, self.finetuned, **self.config)  # the driver's Search.config

    def __call__(self, weights: Any) -> Any:
        return self._obj.build(weights)


class _SessionBuild(_Opened):
    """A daemon session's candidates: a worker downloads each from the daemon."""

    def __init__(self, address: str, token: str | None, job_id: int) -> None:
        self.address, self.token, self.job_id = address, token, job_id

    def _open(self) -> Any:
        from .client import Client

        return Client(self.address, self.token)

    def __call__(self, params: Any) -> Any:
        return self._obj.job(self.job_id).candidate_state_dict(params)


class _EvolverJob(_Job):
    """An :class:`npsfuse.Evolver`'s population on a worker.

    Pickling takes the driver's *current* population (a replacement worker
    starts from it); on the worker it becomes a replica Evolver whose
    :meth:`Evolver.ask` builds the trial a session state asks for first.
    """

    stateful = True

    def __init__(self, ev: Evolver, evaluate: Callable[[Any], Any]) -> None:
        self._ev = ev
        self.evaluate = evaluate

    def __getstate__(self) -> dict[str, Any]:
        ev = self._ev
        return {
            "layout": ev._layout() | {"popsize": ev._np}, "base": ev._base, "extras": ev._extras,
            "evaluate": self.evaluate,
            "population": [ev._slots[ev._slot_of[i]] for i in range(ev._np)],
        }

    def __setstate__(self, st: dict[str, Any]) -> None:
        from .evolve import Evolver

        ev = Evolver._restore(st["layout"], st["evaluate"], "memory")
        ev._base, ev._extras = st["base"], st["extras"]
        for i, flat in enumerate(st["population"]):
            ev._slots[i].copy_(flat)
        self._ev, self.evaluate = ev, st["evaluate"]

    def close(self) -> None:
        """Drop the population (nothing to open: it came with the job)."""
        self._ev._slots = []

    def build(self, desc: Any) -> Any:
        """``desc`` is a session state (JSON text): the trial of its first ask."""
        ev = self._ev
        ev._state, ev._cand, ev._pending_sd = json.loads(desc), None, None
        sd = ev.ask()
        ev._cand, ev._pending_sd = None, None
        return sd

    def sync(self, msg: Any) -> None:
        """Replace parents by their trials, planned in the state ``msg["state"]``
        (built all before any is applied, as the driver did)."""
        ev = self._ev
        ev._state = json.loads(msg["state"])
        built = []
        for j in msg["replace"]:
            slot = ev._take_slot()
            ev._build(j, slot)
            built.append((j, slot))
        for j, slot in built:
            ev._free.append(ev._slot_of[j])
            ev._slot_of[j] = slot


# ------------------------------------------------------------------ workers --


class _Worker:
    """The Ray actor: holds the jobs of the searches it serves, by id."""

    def __init__(self) -> None:
        self._jobs: dict[str, _Job] = {}

    def ping(self) -> int:
        import os

        return os.getpid()

    def setup(self, job_id: str, job: _Job) -> bool:
        job.open()
        self._jobs[job_id] = job
        return True

    def run(self, job_id: str, desc: Any) -> _Outcome:
        return self._jobs[job_id].run(desc)

    def sync(self, job_id: str, msg: Any) -> bool:
        self._jobs[job_id].sync(msg)
        return True

    def drop(self, job_id: str) -> bool:
        job = self._jobs.pop(job_id, None)
        if job is not None:
            job.close()
        return True


@functools.cache
def _worker_class() -> Any:
    return _ray().remote(_Worker)


def new_worker(**options: Any) -> Any:
    """Start one npsfuse worker actor, e.g. ``new_worker(num_gpus=1)``.

    ``options`` are Ray's actor options (``num_cpus``, ``num_gpus``,
    ``resources``, ``scheduling_strategy``, ...). Pass a list of these (or a
    :class:`RayExecutor` over them) as a search's ``executor=`` to evaluate
    on actors you placed yourself; they can serve many searches in turn.
    Ray must be initialised (``ray.init``).
    """
    return _worker_class().options(**{"num_cpus": 1, **options}).remote()


class RayExecutor:
    """Evaluates a search's candidates on a pool of Ray actors.

    Parameters
    ----------
    num_workers
        Actors to start (default: the cluster's CPU count, at most 8), each
        with ``actor_options``. Ignored when ``actors`` is given.
    actors
        Actors you started with :func:`new_worker` (e.g. one per GPU). They
        are not killed when a search ends, and a dead one is not replaced.
    actor_options
        Ray actor options for the actors this executor starts
        (default ``{"num_cpus": 1}``).
    max_restarts
        How many dead actors this executor replaces by new ones (its own
        actors only) before it goes on with fewer.

    Notes
    -----
    ``executor="ray"`` is ``RayExecutor()``: it calls ``ray.init()`` when Ray
    is not initialised (a local cluster, or the one ``RAY_ADDRESS`` names),
    starts its actors for one search and kills them at its end. An executor
    object keeps its actors between searches; :meth:`shutdown` kills those it
    started.
    """

    def __init__(
        self,
        num_workers: int | None = None,
        *,
        actors: Sequence[Any] | None = None,
        actor_options: Mapping[str, Any] | None = None,
        max_restarts: int = 4,
    ) -> None:
        ray = _ray("RayExecutor")
        if num_workers is not None and (isinstance(num_workers, bool) or int(num_workers) < 1):
            raise ValueError(f"num_workers must be a positive integer, got {num_workers!r}")
        if int(max_restarts) < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts!r}")
        self._options = dict(actor_options or {})
        self._restarts = int(max_restarts)
        self._owned = actors is None
        if actors is not None:
            self._actors = list(actors)
            if not self._actors:
                raise ValueError("actors is empty: give at least one worker actor")
        else:
            if not ray.is_initialized():
                ray.init()
            n = num_workers or max(1, min(8, int(ray.cluster_resources().get("CPU", 1))))
            self._actors = [new_worker(**self._options) for _ in range(int(n))]

    @property
    def actors(self) -> list[Any]:
        """The live actors."""
        return list(self._actors)

    @property
    def workers(self) -> int:
        """Number of live actors."""
        return len(self._actors)

    def _lost(self, actor: Any) -> Any | None:
        """Forget a dead actor; a replacement when this executor may start one."""
        if actor in self._actors:
            self._actors.remove(actor)
        if self._owned and self._restarts > 0:
            self._restarts -= 1
            new = new_worker(**self._options)
            self._actors.append(new)
            return new
        return None

    def shutdown(self) -> None:
        """Kill the actors this executor started (not those given to it)."""
        if self._owned:
            ray = _ray()
            for a in self._actors:
                ray.kill(a)
            self._actors = []

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _is_actor(x: Any) -> bool:
    return type(x).__name__ == "ActorHandle"


def _resolve(executor: Any) -> contextlib.AbstractContextManager[RayExecutor]:
    """The executor for ``executor=``, in a ``with``: ``"ray"`` (a pool for
    this search only, shut down at its end), a :class:`RayExecutor`, or a
    list of actors from :func:`new_worker`."""
    if isinstance(executor, RayExecutor):
        return contextlib.nullcontext(executor)
    if isinstance(executor, str):
        if executor != "ray":
            raise ValueError(f"executor must be None, 'ray', a RayExecutor or a list of npsfuse "
                             f"worker actors, got {executor!r}")
        return RayExecutor()  # its __exit__ shuts it down
    if isinstance(executor, Sequence) and executor and all(_is_actor(a) for a in executor):
        return contextlib.nullcontext(RayExecutor(actors=executor))
    if hasattr(executor, "_idle_actors") and hasattr(executor, "submit"):  # ray.util.ActorPool
        raise TypeError("pass the pool's actors (a list from npsfuse.executors.new_worker), "
                        "not a ray.util.ActorPool")
    raise TypeError(f"executor must be None, 'ray', a RayExecutor or a list of npsfuse worker "
                    f"actors, got {type(executor).__name__}")


class _Run:
    """One search's job on an executor's actors: ordered, fault-tolerant map."""

    def __init__(self, ex: RayExecutor, job: _Job) -> None:
        self._ray = _ray()
        self._ex = ex
        self._job = job
        self.id = uuid.uuid4().hex
        self._ref = None if job.stateful else self._ray.put(job)
        #: Actors that hold the job.
        self._ready: list[Any] = []
        self._add(list(ex.actors))

    def _add(self, actors: list[Any]) -> None:
        """Ship the job to ``actors`` (replacing those that die meanwhile)."""
        ray = self._ray
        todo = list(actors)
        while todo:
            ref = self._ref if self._ref is not None else ray.put(self._job)  # stateful: now
            calls = {a.setup.remote(self.id, ref): a for a in todo}
            todo = []
            for call, a in calls.items():
                try:
                    ray.get(call)
                    self._ready.append(a)
                except ray.exceptions.RayActorError:
                    new = self._ex._lost(a)
                    if new is not None:
                        todo.append(new)
        if not self._ready:
            raise RuntimeError("no Ray worker is alive to evaluate the search's candidates")

    def _lost(self, actor: Any) -> None:
        if actor in self._ready:
            self._ready.remove(actor)
        new = self._ex._lost(actor)
        if new is not None:
            self._add([new])
        elif not self._ready:
            raise RuntimeError("every Ray worker died; the search cannot go on "
                               "(resume it from its last checkpoint)")

    @property
    def workers(self) -> int:
        """Actors holding the job."""
        return len(self._ready)

    def map(self, descs: Sequence[Any]) -> list[_Outcome]:
        """Evaluate every description, concurrently, results in order. A
        worker that dies has its candidate re-run on another one."""
        ray = self._ray
        pending = deque(range(len(descs)))
        out: list[_Outcome | None] = [None] * len(descs)
        idle = list(self._ready)
        busy: dict[Any, tuple[Any, int]] = {}
        while pending or busy:
            while pending and idle:
                a = idle.pop(0)
                i = pending.popleft()
                busy[a.run.remote(self.id, descs[i])] = (a, i)
            ready, _ = ray.wait(list(busy), num_returns=1)
            for ref in ready:
                a, i = busy.pop(ref)
                try:
                    out[i] = ray.get(ref)
                    idle.append(a)
                except ray.exceptions.RayActorError:
                    pending.appendleft(i)
                    known = set(self._ready)
                    self._lost(a)
                    idle.extend(x for x in self._ready if x not in known)
        return [o for o in out if o is not None]

    def sync(self, msg: Any) -> None:
        """Send a state change to every worker (stateful jobs); a worker that
        dies meanwhile is replaced from the driver's current state."""
        ray = self._ray
        calls = {a.sync.remote(self.id, msg): a for a in self._ready}
        for call, a in calls.items():
            try:
                ray.get(call)
            except ray.exceptions.RayActorError:
                self._lost(a)

    def __enter__(self) -> _Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        ray = self._ray
        for a in list(self._ready):
            with contextlib.suppress(Exception):
                ray.get(a.drop.remote(self.id), timeout=30)
        self._ready = []


# ---------------------------------------------------- the searches' doors --


@contextlib.contextmanager
def evaluator(
    executor: Any, build: Callable[[Any], Any], evaluate: Callable[[Any], Any],
    fails: FailedScores, *, describe: Callable[[Any], Any] = operator.methodcaller("tolist"),
    remote: Callable[[Any], Any] | None = None,
) -> Iterator[Callable[[Any], list[float]]]:
    """``score(points)`` for the session searches (:func:`npsfuse.nps.prune`,
    :func:`npsfuse.nps.fuse`, :func:`npsfuse.search_merge`): each point's
    ``evaluate(build(describe(point)))``, checked by ``fails``; with
    ``executor`` a worker builds (with ``remote``, default ``build``) and
    evaluates the description it receives."""
    if executor is None:
        yield lambda pts: [fails.evaluate(evaluate, build(describe(p))) for p in pts]
        return
    with _resolve(executor) as ex, _Run(ex, _Job(remote or build, evaluate)) as run:
        yield lambda pts: [fails.evaluate(o.unwrap, None)
                           for o in run.map([describe(p) for p in pts])]


def run_evolver(ev: Evolver, executor: Any, told: Callable[[Any], None]) -> None:
    """:meth:`npsfuse.Evolver.run` on ``executor`` (see the module notes):
    ``told(score)`` tells the evolver a score (and shows and saves it)."""
    from . import _core

    def session(state: Any, fn: Callable[..., str], *args: Any) -> Any:
        return json.loads(_core.call(fn, json.dumps(state), *args))

    with _resolve(executor) as ex, _Run(ex, _EvolverJob(ev, ev.evaluate)) as run:
        while not ev.done:
            # The window: each candidate is the first ask of the state in
            # which every earlier one of the window was rejected.
            window: list[tuple[dict[str, Any], dict[str, Any]]] = []
            s = ev._state
            width = max(run.workers, len(session(s, _core.go.EvolveAsk)))
            while len(window) < width:
                asked = session(s, _core.go.EvolveAsk)
                if not asked:
                    break
                window.append((s, asked[0]))
                s = session(s, _core.go.EvolveTell, -math.inf)["state"]
            outs = run.map([json.dumps(st) for st, _ in window])
            for (_, cand), o in zip(window, outs, strict=True):
                if session(ev._state, _core.go.EvolveAsk)[0] != cand:
                    break  # planned from a state that did not happen: ask again
                score = o.unwrap()
                pre = ev._state
                verdict = session(pre, _core.go.EvolveTell, float(score))["outcome"]
                if verdict["accepted"] and cand.get("trial") is not None:
                    ev._build(cand["individual"], ev._spare)  # the driver keeps it too
                ev._cand, ev._pending_sd = cand, {}
                told(score)
                replaced = [r["individual"] for r in verdict.get("replace") or []]
                if replaced:  # the population changed: the rest of the window is stale
                    run.sync({"state": json.dumps(pre), "replace": replaced})
                    break


def drive_session(
    session: Any,
    evaluate: Callable[[Any], Any],
    executor: Any = "ray",
    *,
    token: str | None = None,
    progress: bool = True,
) -> Any:
    """Score a daemon session's candidates on Ray workers until it is done.

    The driver asks the daemon session (:meth:`npsfuse.Client.nps_search`,
    :meth:`npsfuse.Client.evolve`) for a batch of candidates, hands their
    small descriptions to the workers, which download each candidate's
    tensors from the daemon themselves and evaluate it, and tells the scores
    back in order. A DE evolve session or an NPS search asks a whole
    generation at once; an ``"evolver"`` session one offspring at a time.
    Returns :meth:`npsfuse.client.Session.best`; call
    :meth:`npsfuse.client.Session.finish` for the result.

    Parameters
    ----------
    session
        A :class:`npsfuse.client.Session`.
    evaluate
        ``evaluate(state_dict) -> float`` run on the workers; a non-finite
        score is told as a failed evaluation, an error it raises is raised
        here (the session stays; call this again to go on).
    executor
        ``"ray"``, a :class:`RayExecutor` or a list of worker actors. The
        workers must reach the daemon's address (use a TCP address for a
        multi-node cluster).
    token
        The daemon's bearer token for the workers (default: the session's
        client's token).
    progress
        Show a tqdm bar of evaluations on the driver.
    """
    from ._display import progress_bar

    client = session.client
    build = _SessionBuild(client.address, client._token if token is None else token, session.id)
    job = _Job(build, evaluate)
    bar = progress_bar(total=None, desc="session", unit="eval", disable=not progress)
    try:
        with _resolve(executor) as ex, _Run(ex, job) as run:
            while True:
                cands = session.ask()
                if not cands:
                    break
                # evaluate's errors raise here, as in every search; tell() sends
                # a non-finite score as a failed evaluation
                best = session.tell([float(o.unwrap()) for o in run.map([c.params for c in cands])])
                bar.update(len(cands))
                f = best.get("f")
                if isinstance(f, (int, float)):
                    bar.set_postfix(gen=session.generation, best=f"{f:.4g}")
                if session.done:
                    break
    finally:
        bar.close()
    return session.best()
