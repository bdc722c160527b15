"""The :class:`Client`: jobs, batch and interactive, submitted to the daemon."""

from __future__ import annotations

import functools
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from .._vocab import GENERATIONS, deprecated, renamed, take_renamed
from ._errors import _Unavailable
from ._jobs import Job, Session, job_of
from ._transfer import Transfer

#: ``ref(model, what)``: a model's reference in a spec (tensors are uploaded).
Ref = Callable[[Any, str], str]

#: NPS options sent as JSON lists.
_LISTS = ("weights", "x0")


def _lo_hi(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Accept ``keep=`` for ``density=`` and ``lo=``/``hi=`` for
    ``bounds=(lo, hi)``, deprecated (the vocabulary of :mod:`npsfuse._vocab`)."""

    @functools.wraps(fn)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        take_renamed(kwargs, "Client.nps_search()", "keep", "density")
        if "lo" in kwargs or "hi" in kwargs:
            if "bounds" in kwargs:
                raise TypeError("Client.nps_search() got both lo=/hi= (deprecated) and "
                                "bounds=; pass only bounds=(lo, hi)")
            deprecated("Client.nps_search()", "lo= and hi=", "bounds=(lo, hi)")
            kwargs["bounds"] = (float(kwargs.pop("lo", 0.0)), float(kwargs.pop("hi", 2.0)))
        return fn(self, *args, **kwargs)

    return call


class Client(Transfer):
    """A connection to an ``npsfused`` daemon.

    Parameters
    ----------
    address
        ``unix:///path/npsfused.sock`` (same host: shared-memory tensor
        transfers) or ``grpc://host:port``. Default :func:`default_address`.
    token
        Bearer token (default ``$NPSFUSE_TOKEN``); required by the daemon on TCP.
    timeout
        Seconds before a single call gives up (waits take their own timeout).
    shm
        Use the shared-memory path: ``None`` (default) when the address is a
        Unix socket and the daemon's folder is writable here; ``False`` never.
    """

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- jobs

    def submit(
        self,
        type: str,
        spec: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        retries: int = 3,
    ) -> Job:
        """Submit a job of any type; it is on disk before this returns.

        A retried submit (same ``idempotency_key``) never runs twice: the
        daemon returns the job it stored the first time. Connection failures
        are retried ``retries`` times with the same key.
        """
        key = idempotency_key or f"k-{uuid.uuid4().hex}"
        res = self._submit_call(
            "submit", {"type": type, "spec": dict(spec), "idempotency_key": key}, retries
        )
        return job_of(self, res["job"])

    def submit_many(self, jobs: Sequence[Mapping[str, Any]], *, retries: int = 3) -> list[Job]:
        """Submit several jobs in one call, stored in one commit (one fsync).

        Parameters
        ----------
        jobs
            Items ``{"type": str, "spec": mapping, "idempotency_key": str}``
            (the key is optional: one is made per job, so that retrying
            the call never runs a job twice).
        retries
            Connection failures are retried this many times (same keys).

        Returns
        -------
        list[Job]
            The jobs, in order; all of them are on disk when this returns.
            Either every job is stored or, if the daemon refuses one (the
            error names ``jobs[i]``), none is.
        """
        body = []
        for i, item in enumerate(jobs):
            if not isinstance(item, Mapping):
                raise TypeError(f"jobs[{i}] is a {type(item).__name__}, not a mapping")
            extra = set(item) - {"type", "spec", "idempotency_key"}
            if extra:
                raise ValueError(
                    f"jobs[{i}]: unknown keys {sorted(extra)} (type, spec, idempotency_key)"
                )
            typ, spec = item.get("type"), item.get("spec", {})
            if not isinstance(typ, str) or not typ:
                raise ValueError(f"jobs[{i}]: 'type' must be a job type name, got {typ!r}")
            if not isinstance(spec, Mapping):
                raise TypeError(
                    f"jobs[{i}] ({typ}): 'spec' is a {type(spec).__name__}, not a mapping"
                )
            key = item.get("idempotency_key") or f"k-{uuid.uuid4().hex}"
            body.append({"type": typ, "spec": dict(spec), "idempotency_key": key})
        if not body:
            return []
        res = self._submit_call("submit_many", {"jobs": body}, retries)
        return [job_of(self, r["job"]) for r in res["jobs"]]

    def _submit_call(self, action: str, body: Mapping[str, Any], retries: int) -> Any:
        self.release_results()
        for attempt in range(retries):
            try:
                return self._call(action, body)
            except _Unavailable:
                time.sleep(0.2 * 2**attempt)
        return self._call(action, body)  # the last try: its error is raised

    def _submit_refs(
        self, type: str, key: str | None, build: Callable[[Ref], dict[str, Any]]
    ) -> Job:
        """Submit the spec ``build(ref)`` makes, where ``ref(model, what)``
        turns a path or tensors into a reference (tensors are uploaded, once
        per object). The job deletes (or recycles) its uploads when it ends;
        if building or submitting fails, they are deleted here."""
        uploads: dict[int, str] = {}
        try:
            spec = build(lambda model, what: self._ref(model, uploads, what))
            spec["cleanup"] = sorted({self._cleanup_entry(r) for r in uploads.values()})
            return self.submit(type, spec, idempotency_key=key)
        except BaseException:
            self._drop_uploads(uploads)
            raise

    def submit_merge(
        self,
        config: Mapping[str, Any] | Sequence[Mapping[str, Any]] | str | os.PathLike,
        *,
        out_dir: str | os.PathLike | None = None,
        dtype: str | None = None,
        allow_missing: bool = False,
        shard_size: int | None = None,
        force: bool = False,
        idempotency_key: str | None = None,
        intermediate_dir: str | os.PathLike | None = None,
        lazy: bool = True,
        seed: int | None = None,
        allow_all_same: bool = False,
        copy_tokenizer: bool = True,
    ) -> Job:
        """Submit a merge described mergekit-style.

        ``config`` is a dict (or the path of a YAML file) with
        ``merge_method``, ``base_model``, ``models: [{model, parameters}]`` and
        ``parameters``. ``base_model`` and each ``model`` is a path inside the
        daemon's data roots (relative paths are made absolute here), an
        ``"upload:NAME"``, or a state dict / ``nn.Module``, which is uploaded.
        With ``out_dir`` (inside the data roots) the daemon writes a checkpoint
        folder and :meth:`Job.result` returns its path; otherwise the result is
        the merged state dict.

        mergekit's other configs run through the daemon's ``python`` setting,
        with ``npsfuse moe`` and ``npsfuse multi``'s implementation, and need
        ``out_dir``: a mergekit-moe config (``experts:``; ``seed``,
        ``allow_all_same`` and ``copy_tokenizer`` as :func:`npsfuse.moe`'s),
        and mergekit-multi's named documents, given as a list of configs (or
        a YAML file of several documents): a model reference that names
        another document means its output, written to
        ``intermediate_dir/NAME`` (kept; ``lazy``: an existing one is not
        redone), or without ``intermediate_dir`` to the job's scratch folder;
        ``out_dir`` receives the unnamed (final) merge.
        """
        from . import _mergekit

        config = _mergekit.load(config)
        def options(spec: dict[str, Any]) -> dict[str, Any]:
            """The options every kind of merge spec carries (the daemon refuses
            shard_size and force without out_dir, as npsfuse merge does)."""
            if out_dir is not None:
                spec["out_dir"] = os.path.abspath(os.fspath(out_dir))
            for k, v in (("shard_size", int(shard_size or 0)), ("force", force),
                         ("dtype", dtype), ("allow_missing", allow_missing)):
                if v:
                    spec[k] = v
            return spec

        extra = {"intermediate_dir": intermediate_dir is not None, "lazy": lazy is not True}
        moe_only = {"seed": seed is not None, "allow_all_same": allow_all_same,
                    "copy_tokenizer": copy_tokenizer is not True}
        if isinstance(config, list) or _mergekit.is_moe(config):
            if isinstance(config, list):
                spec: dict[str, Any] = {"configs": _mergekit.multi_configs(config)}
                if intermediate_dir is not None:
                    spec["intermediate_dir"] = os.path.abspath(os.fspath(intermediate_dir))
                if not lazy:
                    spec["lazy"] = False
                extra = moe_only
            else:
                spec = {"config": _mergekit.moe_config(config)}
                if seed is not None:
                    spec["seed"] = int(seed)
                if allow_all_same:
                    spec["allow_all_same"] = True
                if not copy_tokenizer:
                    spec["copy_tokenizer"] = False
            if any(extra.values()):
                raise TypeError(f"{', '.join(k for k, v in extra.items() if v)}: not an option "
                                "of this kind of config")
            return self.submit("merge", options(spec), idempotency_key=idempotency_key)
        if any(extra.values()) or any(moe_only.values()):
            raise TypeError("intermediate_dir, lazy, seed, allow_all_same and copy_tokenizer "
                            "apply to mergekit-multi and mergekit-moe configs only")

        def build(ref: Ref) -> dict[str, Any]:
            spec: dict[str, Any] = {"config": _mergekit.with_refs(config, ref)}
            if out_dir is None:
                spec["result"] = self._result_spec()
            return options(spec)

        return self._submit_refs("merge", idempotency_key, build)

    def _submit_nps(self, type: str, args: Mapping[str, Any]) -> Job:
        """Submit an NPS job from its method's arguments (``locals()``):
        ``base``, ``model`` and ``models`` become references (tensors are
        uploaded), ``scope`` the ``global`` flag; options that are ``None``,
        ``False`` or empty (``x0`` aside) take the daemon's defaults. The
        daemon's job spec keeps its own names: ``density`` is sent as
        ``keep``, ``bounds`` as ``lo`` and ``hi``."""
        skip = {"self", "base", "model", "models", "scope", "idempotency_key"}
        args = dict(args)
        args["keep"] = args.pop("density")
        if "bounds" in args:
            bounds = args.pop("bounds")
            try:
                args["lo"], args["hi"] = (float(b) for b in bounds)
            except (TypeError, ValueError):
                raise ValueError(f"bounds must be a pair (lo, hi) of numbers, got {bounds!r}"
                                 ) from None

        def build(ref: Ref) -> dict[str, Any]:
            spec: dict[str, Any] = {}
            for k, v in args.items():
                empty = isinstance(v, (list, tuple, dict)) and not v and k != "x0"
                if k in skip or v is None or v is False or empty:
                    continue
                spec[k] = dict(v) if isinstance(v, Mapping) else list(v) if k in _LISTS else v
            spec["global"] = args["scope"] == "global"
            spec["base"] = ref(args["base"], "base")
            if "model" in args:
                spec["model"] = ref(args["model"], "model")
            if "models" in args:
                spec["models"] = [ref(m, f"models[{i}]") for i, m in enumerate(args["models"])]
            spec["result"] = self._result_spec()
            return spec

        return self._submit_refs(type, args["idempotency_key"], build)

    @renamed(keep="density")
    def submit_nps_prune(
        self,
        base: Any,
        model: Any,
        *,
        density: float = 0.1,
        subspaces: int = 8,
        weights: Sequence[float] | None = None,
        kind: str = "svd",
        lam: float = 1.0,
        output: str = "model",
        scope: str = "global",
        seed: int = 0,
        dtype: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """NPS-Pruning of one fine-tune: keep the fraction ``density`` of the
        reweighted task vector (``keep``, the old name, is a deprecated
        alias); the result is θ₀ + λ·τ_NPS (``output="model"``) or τ_NPS."""
        return self._submit_nps("nps_prune", locals())

    @renamed(keep="density")
    def submit_compress(
        self,
        base: Any,
        models: Sequence[Any],
        *,
        density: float = 0.05,
        subspaces: int = 8,
        weights: Sequence[float] | None = None,
        kind: str = "svd",
        value_dtype: str | None = None,
        scope: str = "global",
        seed: int = 0,
        idempotency_key: str | None = None,
    ) -> Job:
        """NPS compression (keeping the fraction ``density``; ``keep`` is a
        deprecated alias): each model's task vector as a bit mask plus kept
        values (``{i}:{name}:mask``, ``{i}:{name}:values``, in the base's
        dtype unless ``value_dtype``); see :func:`decompress`."""
        return self._submit_nps("compress", locals())

    # ---- sessions

    @_lo_hi
    def nps_search(
        self,
        base: Any,
        model: Any,
        *,
        density: float = 0.1,
        subspaces: int = 8,
        kind: str = "svd",
        optimizer: str = "cma",
        popsize: int | None = None,
        generations: int | None = GENERATIONS,
        bounds: tuple[float, float] = (0.0, 2.0),
        x0: Sequence[float] | None = None,
        sigma0: float | None = None,
        strategy: str | None = None,
        schedule: Mapping[str, Any] | None = None,
        minimize: bool = False,
        lam: float = 1.0,
        output: str = "model",
        scope: str = "global",
        seed: int = 0,
        dtype: str | None = None,
        idempotency_key: str | None = None,
    ) -> Session:
        """Start an NPS search session: the daemon decomposes τ and holds a
        CMA-ES (or DE) over the subspace weights; use :meth:`Session.ask` and
        :meth:`Session.tell`. Higher scores are better unless ``minimize``.
        The names are :func:`npsfuse.nps.prune`'s: ``density`` (``keep``
        deprecated), ``bounds=(lo, hi)`` (``lo=``/``hi=`` deprecated),
        ``generations`` (default 20 as every search; ``None`` plans none:
        the session runs until you finish it)."""
        return cast(Session, self._submit_nps("nps_search", locals()))  # a session job

    def evolve(
        self,
        models: Sequence[Any],
        *,
        strategy: str = "evolver",
        generations: int = GENERATIONS,
        schedule: Mapping[str, Any] | None = None,
        granularity: str = "element",
        block_size: int | None = None,
        force_index: bool = False,
        random_ref: bool = False,
        exclude: Sequence[str] = (),
        merge: str | None = None,
        base: Any = None,
        merge_params: Mapping[str, Any] | None = None,
        seed: int = 0,
        idempotency_key: str | None = None,
    ) -> Session:
        """Start a weight-space evolution session over a population of
        fine-tuned models (Evolver, or DE/CADE with ``strategy="rand/1/bin"``
        and a cosine ``schedule``), run by the engine :class:`npsfuse.Evolver`
        drives (same seed, same run; default 20 generations, as every
        search). The daemon holds the population; each
        candidate is a whole model to score on your dev set (higher is
        better). Evolver asks one offspring at a time, DE strategies a
        generation at once; the first ask evaluates the initial individuals.
        ``exclude`` holds regular expressions (searched in the names, as
        :class:`npsfuse.Evolver`'s) of tensors (heads) each individual keeps. ``merge``
        (with ``base`` and ``merge_params``, :func:`npsfuse.merge`'s keywords)
        is Evolver "with merger": candidates are merges of the population.
        :meth:`Session.finish` makes the best individual (or the merge) the
        result."""

        def build(ref: Ref) -> dict[str, Any]:
            spec: dict[str, Any] = {
                "models": [ref(m, f"models[{i}]") for i, m in enumerate(models)],
                "strategy": strategy,
                "generations": int(generations),
                "granularity": granularity,
                "force_index": bool(force_index),
                "random_ref": bool(random_ref),
                "exclude": list(exclude),
                "seed": int(seed),
                "result": self._result_spec(),
            }
            if schedule is not None:
                spec["schedule"] = dict(schedule)
            if block_size is not None:
                spec["block_size"] = int(block_size)
            if merge is not None:
                from .. import _spec

                spec["merge"], spec["base"] = merge, ref(base, "base")
                spec["merge_params"] = _spec.payload(merge, len(models), dict(merge_params or {}))
            return spec

        return cast(Session, self._submit_refs("evolve", idempotency_key, build))

    def job(self, id: int) -> Job:
        """The job with this id."""
        return job_of(self, self._call("status", {"id": int(id)}))

    def jobs(
        self,
        state: str | Sequence[str] | None = None,
        type: str | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        """Jobs in the store, oldest first, optionally filtered by state and type."""
        body: dict[str, Any] = {}
        if state:
            body["state"] = [state] if isinstance(state, str) else list(state)
        if type:
            body["type"] = type
        if limit:
            body["limit"] = int(limit)
        return [job_of(self, st) for st in self._call("jobs", body)["jobs"]]
