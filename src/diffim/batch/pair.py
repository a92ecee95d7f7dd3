"""One pair of a batch: the task that subtracts it, and the state of its output.

`subtract_pair` is the function each Dask task runs: it reads, subtracts and writes one
pair and returns its summary row, never raising.  The output's primary header carries
`DONE_CARD` once written and `KEY_CARD`, a hash of the inputs and config, which
`output_state` reads to tell a complete output from a stale or foreign file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from astropy.io import fits

from ..allocator import keep_freed_memory
from ..config import ImagePsfMatchConfig
from ..io import check_not_input, write_exposure
from .manifest import QA_COLUMNS

log = logging.getLogger("diffim.batch")

#: Primary-header cards of a batch output: True once written, and a hash of its inputs.
DONE_CARD, KEY_CARD = "DIFFDONE", "BATCHKEY"


def _resolved_config(config_dict: Mapping[str, Any], overrides: Sequence[str]) -> Any:
    config = ImagePsfMatchConfig.from_dict(config_dict)
    if overrides:
        config.apply_overrides(list(overrides))
    return config


def _pair_key(science: str, template: str, config: ImagePsfMatchConfig) -> str:
    """Return a hash of what an output depends on: the input paths and the whole config."""
    text = json.dumps([science, template, config.to_dict()], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def subtract_pair(
    science: str,
    template: str,
    output: str,
    overrides: Sequence[str],
    config_dict: Mapping[str, Any],
) -> dict[str, Any]:
    """Read, subtract and write one pair; return its summary row (never raises).

    Parameters
    ----------
    science, template : str
        Paths of the two images.
    output : str
        Path of the difference; its folder is created, an existing file replaced
        atomically (temporary file, then ``os.replace``).
    overrides : sequence of str
        ``"field=value"`` overrides applied on top of ``config_dict``.
    config_dict : mapping
        Base configuration, as `ImagePsfMatchConfig.to_dict` gives it.

    Returns
    -------
    dict
        `SUMMARY_COLUMNS` but ``index``: status ``"ok"`` or ``"failed"``, error as
        ``"Type: message"``, runtime in seconds, QA numbers, and the warnings issued.
    """
    from ..subtraction import subtract  # lazy: CLI start-up

    keep_freed_memory()  # this runs in a worker process of our own
    row: dict[str, Any] = {"science": science, "template": template, "output": output}
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            config = _resolved_config(config_dict, overrides)
            check_not_input(output, [science, template])
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            result = subtract(science, template, config=config, keep_matched=False)
            header = {KEY_CARD: _pair_key(science, template, config), DONE_CARD: True}
            write_exposure(result.subtractedExposure, output, overwrite=True, header_extra=header)
            header.update(result.metadata)
        except Exception as error:  # one bad pair must not stop the batch
            log.warning("%s - %s failed: %s", science, template, _describe(error))
            row.update(status="failed", error=_describe(error))
        else:
            row.update({name: header.get(name) for name in QA_COLUMNS})
            row.update(status="ok", error="", direction=header["DIRECTION"])
    row["runtime_s"] = time.perf_counter() - started
    issued = dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught)
    row["warnings"] = " | ".join(issued)
    return row


def output_state(path: str | os.PathLike, key: str | None = None) -> tuple[str, dict[str, Any]]:
    """Say whether ``path`` is a complete diffim batch output, reading its headers only.

    Returns
    -------
    state : {"missing", "complete", "stale", "foreign"}
        ``complete``: readable, with IMAGE, MASK and VARIANCE HDUs whose data lie within
        the file, the ``diffimVersion`` and completion cards, and made from the inputs and
        config hashed in ``key`` (any if None); ``stale``: the same, made otherwise;
        ``foreign``: anything else.
    header : dict
        The primary header of a complete or stale output, else empty.
    """
    path = Path(path)
    if not path.exists():
        return "missing", {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a truncated file warns; its size tells below
            hdulist = fits.open(path, lazy_load_hdus=False)
        with hdulist:
            header, names = dict(hdulist[0].header), [hdu.name for hdu in hdulist[1:]]
            spans = [hdulist.fileinfo(i) for i in range(len(hdulist))]
    except (OSError, ValueError, KeyError):
        return "foreign", {}
    end = max(span["datLoc"] + span["datSpan"] for span in spans)
    complete = end <= path.stat().st_size and names[:3] == ["IMAGE", "MASK", "VARIANCE"]
    if not (complete and header.get(DONE_CARD) is True and "diffimVersion" in header):
        return "foreign", {}
    return ("stale" if key not in (None, header.get(KEY_CARD)) else "complete"), header
