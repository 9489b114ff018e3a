"""The slim training module (curriculum, calibration, sweeps). Arrives with the training issue."""
