"""Progress bars for steps that take more than a second or so.

Bars are off unless the command line turns them on (`enable`), which it does only when
standard error is a terminal and ``--quiet`` is not given: library calls and logs written
to files stay free of them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["enable", "progress_bar"]

_ENABLED = False


def enable(on: bool = True) -> None:
    """Turn progress bars on (the CLI does, for a terminal) or off."""
    global _ENABLED  # one process-wide switch, set by the CLI only
    _ENABLED = on


class _Silent:
    def update(self, n: int = 1) -> None:
        """Do nothing."""


@contextmanager
def progress_bar(total: int | None, description: str) -> Iterator[Any]:
    """Yield an object with ``update(n)``: a tqdm bar on stderr when enabled, else silent."""
    if not _ENABLED:
        yield _Silent()
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=description, file=sys.stderr, leave=False) as bar:
        yield bar
