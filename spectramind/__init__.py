"""SpectraMind V50: Ariel-like transit observations in, calibrated transmission spectra out."""

__version__ = "0.1.0"
