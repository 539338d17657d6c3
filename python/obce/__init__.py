"""obce: explain and compress BERT-family encoders with 0-dimensional persistent homology."""

from ._version import __version__
from .kernel import build_info, fast_death_radii, h0_deaths

__all__ = ["__version__", "build_info", "fast_death_radii", "h0_deaths"]
