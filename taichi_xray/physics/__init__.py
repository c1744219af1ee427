"""X-ray physics: materials, spectra, detector response and the Beer-Lambert stage."""
from .materials import Material, get_material, mu_matrix, known_materials, iodine_solution
from .spectra import Spectrum
from .detector import Detector
from .attenuation import (
    exclusive_lengths,
    exclusive_matrix,
    beer_lambert,
    beer_lambert_backward,
    render_intensity,
    transmission,
    line_integral,
    add_poisson_noise,
)
from .source import (FocalSpot, shifted_camera, penumbra_width, heel_weights, heel_factors, photons_per_pixel,
                     fluence_falloff, spekpy_spectrum)
from .detector_model import MTF, DetectorModel, PhotonCountingModel, signal_weights, counting_bin_weights
from .hu import HUConversion, get_hu_conversion, hu_conversions
from .scatter import AntiScatterGrid, KernelScatterModel, scatter_estimate, water_equivalent_thickness
from .montecarlo import simulate, Slab, Cylinder, Sphere, Source, DetectorTally, MCResult
from .imaging import Imaging
