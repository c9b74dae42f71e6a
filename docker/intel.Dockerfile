# edgekit runtime for Intel CPUs and integrated GPUs: OpenVINO (its runtime image carries the GPU's OpenCL
# driver) and ONNX Runtime, Ubuntu 24.04, Python 3.12, x86_64. No torch.
#   build (from the repository root):
#     docker build -f docker/intel.Dockerfile -t edgekit:intel .
#   run on a folder of images (CPU):
#     docker run --rm -v "$PWD:/data" edgekit:intel detect /data/yolo_intel-cpu /data/images --backend openvino --save-dir /data/out
#   run on the iGPU and a camera (the render group owns /dev/dri):
#     docker run --rm --device /dev/dri --group-add "$(stat -c %g /dev/dri/render*)" --device /dev/video0 \
#       -v "$PWD:/data" edgekit:intel detect /data/yolo_intel-igpu 0 --backend openvino --json /data/cam.jsonl
FROM openvino/ubuntu24_runtime:2025.4.1

LABEL org.opencontainers.image.title="edgekit runtime: Intel (OpenVINO, ONNX Runtime)" \
      io.edgekit.platform="linux/amd64" io.edgekit.python="3.12" io.edgekit.glibc="2_39" \
      io.edgekit.extra="runtime-intel"

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# root for the installation only (the base image runs as its openvino user)
USER 0
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/edgekit
COPY pyproject.toml setup.py README.md ./
COPY targets ./targets
COPY edgekit ./edgekit
# Ubuntu 24.04's Python is externally managed (PEP 668): edgekit gets its own venv. The openvino wheel is pinned
# to the base image's release, so the Python API and the image's GPU plugin are the same OpenVINO.
# edgekit from this checkout; its requirements are pyproject ranges, resolved per board in tests/test_docker.py
# hadolint ignore=DL3013
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir ".[runtime-intel]" "openvino==2025.4.1"
ENV PATH="/opt/venv/bin:${PATH}"

# non-root (uid 1001: the base image's openvino user has 1000); video: cameras; the iGPU's render group id is the
# host's, added at run time (--group-add)
RUN useradd --create-home --uid 1001 --user-group --groups video edgekit
USER 1001
WORKDIR /home/edgekit
ENTRYPOINT ["edgekit"]
CMD ["--help"]
