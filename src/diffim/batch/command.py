"""The command line of a batch (wired into `diffim.cli`): ``diffim batch`` and ``--tiles``.

`add_batch_arguments` adds the ``diffim batch`` arguments (`BATCH_OPTIONS`),
`run_batch_command` runs the command, and `parse_tiles` is the type of ``diffim subtract
--tiles``.  This module imports neither numpy nor astropy: `run` is imported when the
command runs.
"""

from __future__ import annotations

import argparse
import contextlib
from collections import Counter
from pathlib import Path
from typing import Any

from ..config import ImagePsfMatchConfig
from ..errors import DiffimValueError


def parse_tiles(text: str) -> tuple[int, int]:
    """Parse ``"NYxNX"`` (``"2x3"``: 2 rows of 3 tiles), the ``--tiles`` argument type."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        msg = f"--tiles wants NYxNX with positive integers, e.g. 2x2; got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return int(parts[0]), int(parts[1])


#: ``diffim batch`` options: flag and argparse keywords.
BATCH_OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--out", {"required": True, "metavar": "DIR", "help": "folder of outputs and summary.csv"}),
    ("--scheduler", {"metavar": "ADDRESS", "help": "Dask scheduler (default: a local cluster)"}),
    ("--workers", {"type": int, "metavar": "N", "help": "local worker processes (all cores)"}),
    ("--threads-per-worker", {"type": int, "metavar": "M", "help": "threads per local worker"}),
    ("--retries", {"type": int, "default": 2, "metavar": "R", "help": "re-runs of a task (2)"}),
    ("--force", {"action": "store_true", "help": "recompute and replace every output"}),
    (
        "--no-resume",
        {
            "dest": "resume",
            "action": "store_false",
            "help": "do not skip completed pairs: an existing output fails its pair",
        },
    ),
    (
        "--config",
        {
            "nargs": "+",
            "default": [],
            "metavar": "KEY=VALUE",
            "help": "configuration overrides for every pair, e.g. kernelSize=25",
        },
    ),
    ("--config-file", {"help": "YAML or TOML configuration (see diffim config)"}),
)


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``diffim batch`` arguments (MANIFEST and `BATCH_OPTIONS`) to ``parser``."""
    parser.add_argument(
        "manifest", metavar="MANIFEST", help="CSV/Parquet: science,template[,output][,config]"
    )
    for flag, options in BATCH_OPTIONS:
        parser.add_argument(flag, **options)


def run_batch_command(args: argparse.Namespace) -> int:
    """Run ``diffim batch``; print the summary path; return 0 if no pair failed, else 1."""
    from .cluster import run  # lazy: this module stays free of numpy and astropy
    from .manifest import SUMMARY_NAME

    if args.scheduler and (args.workers is not None or args.threads_per_worker is not None):
        msg = "--workers and --threads-per-worker size a local cluster; drop them with --scheduler"
        raise DiffimValueError(msg)
    if args.config_file:
        config = ImagePsfMatchConfig.load(args.config_file)
    else:
        config = ImagePsfMatchConfig()
    config.apply_overrides(args.config)
    with contextlib.ExitStack() as stack:
        client = None
        if args.scheduler:
            from dask.distributed import Client

            client = stack.enter_context(Client(args.scheduler, timeout=60))
        summary = run(
            args.manifest,
            args.out,
            client=client,
            n_workers=args.workers,
            threads_per_worker=1 if args.threads_per_worker is None else args.threads_per_worker,
            resume=args.resume,
            force=args.force,
            max_retries=args.retries,
            config=config,
        )
    counts = Counter(summary["status"])
    done = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    print(f"{Path(args.out) / SUMMARY_NAME}: {done}")  # noqa: T201 - the command's report
    return 1 if counts["failed"] else 0
