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
numpy nor astropy).  Every name is re-exported here: import from ``diffim.batch``.
"""

# the module constants and the private names used by tests and benchmarks, not in
# __all__, import from diffim.batch as before the split (the "as" marks a re-export)
from .cluster import SUMMARY_INTERVAL_S as SUMMARY_INTERVAL_S
from .cluster import _client_for as _client_for
from .cluster import _Progress as _Progress
from .cluster import run
from .command import BATCH_OPTIONS as BATCH_OPTIONS
from .command import add_batch_arguments, parse_tiles, run_batch_command
from .manifest import QA_COLUMNS as QA_COLUMNS
from .manifest import SUMMARY_COLUMNS as SUMMARY_COLUMNS
from .manifest import SUMMARY_NAME as SUMMARY_NAME
from .manifest import PairSpec, read_manifest
from .pair import DONE_CARD as DONE_CARD
from .pair import KEY_CARD as KEY_CARD
from .pair import output_state, subtract_pair
from .tiles import TileResult, default_margin, subtract_tile, subtract_tiled, tile_layout

__all__ = [
    "PairSpec", "TileResult", "add_batch_arguments", "default_margin", "output_state",
    "parse_tiles", "read_manifest", "run", "run_batch_command", "subtract_pair",
    "subtract_tile", "subtract_tiled", "tile_layout",
]  # fmt: skip
