"""Data path: ADC2025 file format, simulator, calibration, light curves."""
