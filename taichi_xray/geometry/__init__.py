"""Geometry: cameras, poses and adapters to other tools' conventions (see docs/conventions.md)."""
from .adapters import *  # noqa: F401,F403
from .adapters import __all__ as _adapters_all
from .figure import GeometryFigure, geometry_figure, silhouette_edges

__all__ = list(_adapters_all) + ["GeometryFigure", "geometry_figure", "silhouette_edges"]
