"""Simulated science/template pairs with known truth, and point-source injection.

The template pixel grid is the reference.  A science pixel ``p_s`` sees the sky of template
pixel ``p_t = c + R(rotation) (p_s - c) + shift`` with ``c`` the image centre, and both
exposures carry TAN WCSs that encode exactly this mapping.  Pixel values are in ADU: the
expected counts in e- (sky + sources) are Poisson-sampled, read noise is added, and the
result is divided by the gain; the variance plane is the expected variance
``(model_e + read_noise**2) / gain**2`` in ADU**2.  For a source that does not vary, the
science flux is ``flux_ratio`` times the template flux, so the true PSF-matching kernel
(template -> science) has sum ``flux_ratio`` everywhere.

The package is split by concept: `parameters` (`SimulationParameters`, their checks and
overrides), ``_frames`` (the science -> template pixel mapping, each frame's WCS, PSF and
sky), ``_scene`` (the random catalogs: stars, variables, transients, galaxies, cosmic rays),
`render` (`render_point_sources`, `inject_point_sources` and `Injection`; galaxy stamps, the
expected image of an epoch, its noise and artefacts) and `pair` (`simulate_pair`,
`SimulatedPair`, `SimulationTruth`, `write_pair`).  Every public name is re-exported here:
import from ``diffim.simulate``.
"""

from .pair import SimulatedPair, SimulationTruth, simulate_pair, write_pair
from .parameters import SimulationParameters

# module constants, not in __all__, importable from diffim.simulate as before the split
from .render import HALF_LIGHT_PER_SCALE_LENGTH as HALF_LIGHT_PER_SCALE_LENGTH
from .render import STAMP_EDGE_LEVEL as STAMP_EDGE_LEVEL
from .render import Injection, inject_point_sources, render_point_sources

__all__ = [
    "Injection",
    "SimulatedPair",
    "SimulationParameters",
    "SimulationTruth",
    "inject_point_sources",
    "render_point_sources",
    "simulate_pair",
    "write_pair",
]
