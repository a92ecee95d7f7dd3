"""Many image pairs, or the tiles of one large pair, on Dask (``dask.distributed``).

`run` subtracts every pair of a manifest, one `subtract_pair` task per pair, and streams
a summary into ``<out_dir>/summary.csv``.  `subtract_tiled` cuts one pair into overlapping
tiles, fits and subtracts each tile as its own task and stitches the tile interiors.  Dask
is imported lazily, only where a cluster is used.

The package is split by concept: `manifest` (`read_manifest`, `PairSpec`, and the summary
table: `SUMMARY_COLUMNS`, ``summary.csv``), `pair` (`subtract_pair`, the task of one pair,
and `output_state`, which reads its output's header), `cluster` (`run`: the pairs on a
Dask client or on a ``LocalCluster`` of its own, resumable, with a progress bar), `tiles`
(`subtract_tiled`, `subtract_tile`, `tile_layout`, `default_margin`) and `command` (the
``diffim batch`` arguments, `run_batch_command` and `parse_tiles`; it imports neither
numpy nor astropy).  Every name is re-exported here, imported on first use: import
from ``diffim.batch``.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:
    from .cluster import run
    from .command import add_batch_arguments, parse_tiles, run_batch_command
    from .manifest import PairSpec, read_manifest
    from .pair import output_state, subtract_pair
    from .tiles import TileResult, default_margin, subtract_tile, subtract_tiled, tile_layout

#: Every name and the module defining it, imported on first use: building the command
#: line's parser needs `command` alone, which imports neither numpy nor astropy.  The
#: module constants and the private names used by tests and benchmarks are not in __all__.
_LAZY_NAMES = {
    **dict.fromkeys(("run", "SUMMARY_INTERVAL_S", "_client_for", "_Progress"), "cluster"),
    **dict.fromkeys(
        ("add_batch_arguments", "parse_tiles", "run_batch_command", "BATCH_OPTIONS"), "command"
    ),
    **dict.fromkeys(
        ("PairSpec", "read_manifest", "QA_COLUMNS", "SUMMARY_COLUMNS", "SUMMARY_NAME"),
        "manifest",
    ),
    **dict.fromkeys(("output_state", "subtract_pair", "DONE_CARD", "KEY_CARD"), "pair"),
    **dict.fromkeys(
        ("TileResult", "default_margin", "subtract_tile", "subtract_tiled", "tile_layout"),
        "tiles",
    ),
}
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY_NAMES)

__all__ = [
    "PairSpec", "TileResult", "add_batch_arguments", "default_margin", "output_state",
    "parse_tiles", "read_manifest", "run", "run_batch_command", "subtract_pair",
    "subtract_tile", "subtract_tiled", "tile_layout",
]  # fmt: skip
