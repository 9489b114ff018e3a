import os

# Two shared cores: keep numerical libraries single-threaded so tests neither fight nor flake.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

from pathlib import Path  # noqa: E402

import torch  # noqa: E402

# Without a GPU the Triton kernels run on CPU tensors in triton's interpreter; it must be chosen
# before anything imports triton (importing torch does not).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def adc_sample_dir() -> Path:
    """The real ADC2025 sample shipped beside the repository in ../shared (never copied in)."""
    return Path(os.environ.get("SPECTRAMIND_ADC_SAMPLE", REPO.parent / "shared" / "adc2025-sample"))


@pytest.fixture
def adc_sample() -> Path:
    path = adc_sample_dir()
    if not (path / "train").is_dir():
        pytest.skip(f"real ADC2025 sample not found at {path} (set SPECTRAMIND_ADC_SAMPLE)")
    return path
