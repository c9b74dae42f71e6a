# edgekit runtime for NVIDIA Jetson on JetPack 5 (L4T r35, Ubuntu 20.04, Python 3.8, TensorRT 8.5): Xavier NX,
# AGX Xavier, Orin on JetPack 5. No torch: the engine is built on the device from the artifact's ONNX.
#   build (on the Jetson, from the repository root):
#     docker build -f docker/jetson-jetpack5.Dockerfile -t edgekit:jetpack5 .
#   run (the NVIDIA container runtime gives the container the GPU, CUDA and TensorRT of the board):
#     docker run --rm --runtime nvidia -v "$PWD/artifacts:/data" edgekit:jetpack5 build-engine /data/yolo_jetson
FROM nvcr.io/nvidia/l4t-tensorrt:r8.5.2-runtime

LABEL org.opencontainers.image.title="edgekit runtime: Jetson, JetPack 5" \
      io.edgekit.platform="linux/arm64" io.edgekit.python="3.8" io.edgekit.glibc="2_31" \
      io.edgekit.extra="runtime-jetson"

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-pip libgomp1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/edgekit
COPY pyproject.toml setup.py README.md ./
COPY targets ./targets
COPY edgekit ./edgekit
# Ubuntu 20.04's pip 20.0 predates extras that name their own project: a pip that knows them first.
# TensorRT's Python bindings come from the base image (JetPack's), not from pip; they load the GPU driver the NVIDIA
# runtime mounts when the container runs (`edgekit targets` shows tensorrt "yes" there), not while it is built.
# edgekit from this checkout; its requirements are pyproject ranges, resolved per board in tests/test_docker.py
# hadolint ignore=DL3013
RUN python3 -m pip install --no-cache-dir "pip==24.0" \
    && python3 -m pip install --no-cache-dir ".[runtime-jetson]" \
    && useradd --create-home --uid 1000 --user-group --groups video edgekit

# non-root (uid 1000; its video group opens /dev/video* cameras passed with --device)
USER 1000
WORKDIR /home/edgekit
ENTRYPOINT ["edgekit"]
CMD ["--help"]
