# edgekit converter: checkpoint -> artifact for every backend (torch CPU, ONNX, onnxsim, OpenVINO, NCNN + pnnx,
# NNCF, pycocotools), x86_64, Python 3.11. Converts and validates on a workstation or CI; not for the device.
#   build (from the repository root):
#     docker build -f docker/converter.Dockerfile -t edgekit:converter .
#   run (artifacts land next to the checkpoint in the mounted folder):
#     docker run --rm -v "$PWD:/data" edgekit:converter convert /data/best.pt --target raspberry-pi-5 -o /data/yolo_raspberry-pi-5
FROM python:3.11.11-slim-bookworm

LABEL org.opencontainers.image.title="edgekit converter" \
      io.edgekit.platform="linux/amd64" io.edgekit.python="3.11" io.edgekit.glibc="2_36" \
      io.edgekit.extra="convert,validate,quant,onnxruntime,openvino,ncnn"

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

# torch pinned to the CPU wheel first (an unpinned torch resolves to a multi-GB CUDA build), as the Makefile does
RUN pip install --no-cache-dir "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu

WORKDIR /opt/edgekit
COPY pyproject.toml setup.py README.md ./
COPY targets ./targets
COPY edgekit ./edgekit
# edgekit from this checkout; its requirements are pyproject ranges, resolved per board in tests/test_docker.py
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[convert,validate,quant,onnxruntime,openvino,ncnn]" \
    && useradd --create-home --uid 1000 --user-group edgekit

# non-root (uid 1000)
USER 1000
WORKDIR /home/edgekit
ENTRYPOINT ["edgekit"]
CMD ["--help"]
