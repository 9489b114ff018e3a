"""SpectraMind V50: Ariel-like transit observations in, calibrated transmission spectra out."""

# Registering the custom operators on import is what lets a TorchScript artifact that calls
# spectramind::selective_scan / spectramind::gat_attention load with only `import spectramind`.
from spectramind import ops as _ops  # noqa: F401

__version__ = "0.1.0"
