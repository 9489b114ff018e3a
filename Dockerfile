# syntax=docker/dockerfile:1
# The SpectraMind V50 inference server on an NVIDIA GPU: `uvicorn serve.app:app` on port 8000.
#
#   docker build -t spectramind-serve .
#   python -m serve.quickstart --build-only          # or spectramind-export ... --out outputs/artifacts/NAME
#   docker run --gpus all -p 8000:8000 \
#       -v "$PWD/outputs/artifacts/default:/artifacts/default:ro" spectramind-serve
#   curl -s 127.0.0.1:8000/v2/health/ready
#
# The artifact is not in the image: mount an artifact directory (manifest.json, model files,
# golden.npz, checkpoint.pt) read-only at /artifacts/default, or mount it elsewhere and set
# SPECTRAMIND_ARTIFACT to that path. The server verifies its hashes and exits non-zero on a
# tampered one. Every other setting is an environment variable too (serve/settings.py:
# SPECTRAMIND_DEVICE, SPECTRAMIND_RUNTIME=torchscript|onnx, SPECTRAMIND_BATCHING, limits, ...).
#
# Build arguments: TORCH_SPEC (the Linux x86_64 wheel on PyPI is a CUDA build; keep it in the
# range of pyproject.toml) and TORCH_INDEX (an index URL for another CUDA variant, empty = PyPI).
# The torch wheel brings its own CUDA libraries, so the host needs only an NVIDIA driver recent
# enough for that wheel's CUDA version and the NVIDIA Container Toolkit (--gpus).

ARG CUDA_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

# ---------------------------------------------------------------- build: the virtual environment
FROM ${CUDA_IMAGE} AS build
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX=""
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Compilers and headers only here: some dependencies (batman-package) may build from source.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade pip "setuptools>=77" wheel packaging ninja \
 && pip install ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "$TORCH_SPEC" \
 && pip freeze | grep -i '^torch==' > /tmp/torch-constraint.txt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY spectramind/ spectramind/
COPY train/ train/
COPY export/ export/
COPY serve/ serve/
COPY triton_kernels/ triton_kernels/
# The serve and gpu extras (onnxruntime-gpu: never also the CPU onnxruntime of the export extra),
# plus onnx and onnxscript, which SPECTRAMIND_RUNTIME=onnx imports (export.onnx_export) without
# pulling in onnxruntime. mamba-ssm's setup.py imports torch (hence --no-build-isolation); the
# server never runs its CUDA kernels (a GPU test oracle only), so it is built without them: no
# nvcc here, no download of a prebuilt binary that may not match this torch.
RUN MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE \
    pip install --no-build-isolation -c /tmp/torch-constraint.txt ".[serve,gpu]" "onnx>=1.15" "onnxscript>=0.2" \
 && if pip show onnxruntime >/dev/null 2>&1; then echo "onnxruntime (CPU) must not sit beside onnxruntime-gpu" >&2; exit 1; fi \
 && python -c "import onnxruntime, torch, fastapi, uvicorn, prometheus_client, serve.service; print('torch', torch.__version__, 'onnxruntime', onnxruntime.__version__)"

# ---------------------------------------------------------------- runtime
FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 --shell /usr/sbin/nologin spectramind
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The source tree too: configs/ (Hydra YAML, read through spectramind.config) lives beside the
# packages, and uvicorn imports serve.app from the working directory.
COPY --chown=root:root . /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SPECTRAMIND_ARTIFACT=/artifacts/default \
    TRITON_CACHE_DIR=/home/spectramind/.triton/cache
USER spectramind
EXPOSE 8000
# Ready only after the artifact is verified, every batch bucket warmed up and the golden outputs
# matched (the first start may also compile Triton kernels): hence the long start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4).status == 200 else 1)"]
# exec form: uvicorn is PID 1 and gets SIGTERM from `docker stop`, so the server drains in-flight
# requests (SPECTRAMIND_DRAIN_TIMEOUT_S) before it exits; give docker stop a longer -t if needed.
CMD ["uvicorn", "serve.app:app", "--host", "0.0.0.0", "--port", "8000"]
