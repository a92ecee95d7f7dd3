"""Pictures of a subtraction for people to look at (matplotlib, an optional dependency).

Only this package imports matplotlib, and only inside its functions, so that the rest of
diffim works without it (``pip install 'diffim[plot]'`` brings it).  Figures are drawn
with matplotlib's object interface (no pyplot, no interactive backend, no global state) and
written atomically: a temporary file in the destination folder, then ``os.replace``.

`write_debug_plots` draws one PNG per question a person asks of a subtraction (are the
images matched? which stars made the kernel, and why were others rejected? how does the
kernel vary over the field? is the difference consistent with noise?); `plot_subtraction`
draws the one-page summary of the CLI demo.

The package is split by concept: `display` (lazy matplotlib import, figures and their
atomic writing, image stretches and panels, the style of each candidate class), `overview`
(the whole field: ``images.png``, ``candidates.png`` and `plot_subtraction`), `kernels`
(``candidate_kernels.png``, ``spatial_kernel.png``, ``kernel_sum.png``), `residuals`
(``residual_histograms.png``, ``normalized_residuals.png``) and `debug`
(`write_debug_plots`).  Every public name is re-exported here: import from
``diffim.diagnostics``.
"""

from .debug import write_debug_plots

# module constants and the atomic writer, not in __all__, importable as before the split
from .display import CATEGORY_STYLES as CATEGORY_STYLES
from .display import DIFFERENCE_STYLE as DIFFERENCE_STYLE
from .display import DPI as DPI
from .display import FLAGGED_PLANES as FLAGGED_PLANES
from .display import STRETCH_SAMPLE as STRETCH_SAMPLE
from .display import _save as _save
from .kernels import KERNEL_SUM_GRID as KERNEL_SUM_GRID
from .kernels import KERNEL_SUPPORT_FRACTION as KERNEL_SUPPORT_FRACTION
from .kernels import MAX_KERNEL_PANELS as MAX_KERNEL_PANELS
from .kernels import SPATIAL_GRID as SPATIAL_GRID
from .overview import plot_subtraction
from .residuals import GAUSSIAN_TAIL_5SIGMA as GAUSSIAN_TAIL_5SIGMA
from .residuals import HISTOGRAM_BINS as HISTOGRAM_BINS
from .residuals import LEGEND_BELOW as LEGEND_BELOW
from .residuals import STAGE_HISTOGRAMS as STAGE_HISTOGRAMS
from .residuals import STAGE_LABELS as STAGE_LABELS

__all__ = ["plot_subtraction", "write_debug_plots"]
