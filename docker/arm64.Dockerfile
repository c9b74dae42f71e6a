# edgekit runtime for 64-bit ARM boards: Raspberry Pi 5 (Pi OS bookworm = Debian 12, Python 3.11), RK3588 boards.
# NCNN and ONNX Runtime on the CPU; no torch.
#   build (on the board, or elsewhere with buildx + QEMU; from the repository root):
#     docker buildx build --platform linux/arm64 -f docker/arm64.Dockerfile -t edgekit:arm64 --load .
#   run on a folder of images:
#     docker run --rm -v "$PWD:/data" edgekit:arm64 detect /data/yolo_raspberry-pi-5 /data/images --save-dir /data/out
#   run on the first camera:
#     docker run --rm --device /dev/video0 -v "$PWD:/data" edgekit:arm64 detect /data/yolo_raspberry-pi-5 0 --json /data/cam.jsonl
FROM python:3.11.11-slim-bookworm

LABEL org.opencontainers.image.title="edgekit runtime: arm64 (NCNN, ONNX Runtime)" \
      io.edgekit.platform="linux/arm64" io.edgekit.python="3.11" io.edgekit.glibc="2_36" \
      io.edgekit.extra="runtime-arm"

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# libgomp1: ncnn's OpenMP threads; libglib2.0-0: OpenCV's video I/O
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/edgekit
COPY pyproject.toml setup.py README.md ./
COPY targets ./targets
COPY edgekit ./edgekit
# edgekit from this checkout; its requirements are pyproject ranges, resolved per board in tests/test_docker.py
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[runtime-arm]" \
    && useradd --create-home --uid 1000 --user-group --groups video edgekit

# non-root (uid 1000; its video group opens /dev/video* cameras passed with --device)
USER 1000
WORKDIR /home/edgekit
ENTRYPOINT ["edgekit"]
CMD ["--help"]
