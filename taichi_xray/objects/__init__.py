"""Objects a scene is made of besides surface meshes: CT volumes and tetrahedral meshes."""
from .volume import Volume, VolumeError
from .volume_project import MeshSlots, VolumeProjector, project_volume
from .tetmesh import TetMesh, TetMeshWarning, TetReport
from .tetbuild import sample_ct, tetmesh_from_ct, tetrahedralize
from .tetssm import TetShapeDensityModel

__all__ = ["Volume", "VolumeError", "VolumeProjector", "MeshSlots", "project_volume", "TetMesh", "TetMeshWarning",
           "TetReport", "tetrahedralize", "sample_ct", "tetmesh_from_ct", "TetShapeDensityModel"]
