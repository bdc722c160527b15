"""``make experiment`` / ``make demo``: the papers' comparisons on real small models, offline.

All fine-tunes start from the same pre-trained all-MiniLM-L6-v2; each task
has its own fixed head (never merged); validation data is used only to
choose λ and by searches, test data only for the tables. Results go to
``experiments/results/`` (``results.md``, ``raw.json`` and PNG plots).

Usage::

    python experiments/run.py                       # the full study (make experiment)
    python experiments/run.py --demo                # the short one (make demo)
    python experiments/run.py --tasks sms_spam,r8 --config my.yaml --set lr=3e-4
    python experiments/run.py --list-tasks
    python experiments/run.py --only spiking        # issue 19's spiking study alone

The configuration is a preset (full, ``--demo``, ``--mini``), then the keys
of ``--config`` (JSON or YAML), then ``--tasks`` / ``--seeds``, then each
``--set key=value``. docs/experiments.md explains every key.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import config  # noqa: E402
import study  # noqa: E402
import tasks  # noqa: E402
from config import Config  # noqa: E402

HERE = Path(__file__).resolve().parent


def build_config(args: argparse.Namespace) -> Config:
    """The run's configuration from the parsed command line."""
    cfg = config.DEMO if args.demo else config.MINI if args.mini else Config()
    values = dict(config.load_file(args.config)) if args.config else {}
    if args.tasks:
        values["tasks"] = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.seeds:
        values["seeds"] = args.seeds
    for item in args.set or []:
        key, value = config.parse_assignment(item)
        values[key] = value
    cfg = cfg.with_overrides(values)
    for name in cfg.tasks:
        tasks.get(name)  # unknown names fail here, before the model loads
    return cfg


def parser() -> argparse.ArgumentParser:
    """The command line."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    preset = ap.add_mutually_exclusive_group()
    preset.add_argument("--demo", action="store_true", help="the short study `make demo` runs")
    preset.add_argument("--mini", action="store_true", help="the test suite's miniature")
    ap.add_argument("--config", help="a JSON or YAML file of configuration keys")
    ap.add_argument("--tasks", help="comma-separated task names (see --list-tasks)")
    ap.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override one key (value read as JSON when it parses)")
    ap.add_argument("--out", help="results folder (default experiments/results[-demo])")
    ap.add_argument("--list-tasks", action="store_true", help="list registered tasks and exit")
    ap.add_argument("--only", choices=("study", "spiking"),
                    help="run one part: the MiniLM study or the spiking CADE study "
                         "(both by default; --demo and --mini run the study only, "
                         "--mini --only spiking a miniature of the spiking one)")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run the study from the command line."""
    args = parser().parse_args(argv)
    if args.list_tasks:
        for t in tasks.TASKS.values():
            print(f"{t.name:<12} {t.family:<10} {t.n_classes:>2} classes  {t.source}")
        return 0
    try:
        cfg = build_config(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    default = "results-demo" if args.demo else "results-mini" if args.mini else "results"
    out = Path(args.out) if args.out else HERE / default
    if args.only != "spiking":
        study.run(cfg, out)
    if args.only == "spiking" or (args.only is None and not (args.demo or args.mini)):
        import importlib.util

        if importlib.util.find_spec("spikingjelly") is None:
            print("spiking study skipped: spikingjelly is not installed "
                  "(.venv/bin/pip install --no-deps -r requirements-experiment.txt)",
                  file=sys.stderr)
            return 2 if args.only == "spiking" else 0
        import spiking_study  # needs spikingjelly: only imported when run

        spiking_study.run(out, spiking_study.QUICK if args.mini else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
