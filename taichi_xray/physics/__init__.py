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
