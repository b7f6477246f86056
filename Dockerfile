# syntax=docker/dockerfile:1
# Dockerfile: dsinfer in a container (docs/operating.md section 16).
# Stage "build" compiles on Debian 12 with the CUDA toolkit from NVIDIA's
# Debian 12 repository; stage "runtime" is Debian 12 slim with only the shared
# libraries dsinfer loads, running as the non-root user 10001. Run it with a
# read-only root file system, the model mounted read-only at /models, and a
# writable /var/lib/dsinfer (tmpfs or emptyDir):
#   docker build -t dsinfer .
#   docker run --read-only --tmpfs /var/lib/dsinfer --gpus all -p 8443:8443 \
#     -v /srv/models/DeepSeek-R1-Distill-Qwen-7B:/models:ro dsinfer
# Lint: deploy/lint/dockerfile_lint.py (tests/test_deploy_lint.sh).
ARG DEBIAN_TAG=12.11-slim
ARG CUDA_PKG=13-0

FROM debian:${DEBIAN_TAG} AS build
ARG CUDA_PKG
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl gnupg \
 && curl -fsSL https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb \
      -o /tmp/cuda-keyring.deb \
 && dpkg -i /tmp/cuda-keyring.deb \
 && rm /tmp/cuda-keyring.deb \
 && apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake pkg-config \
      libssl-dev libmicrohttpd-dev libgnutls28-dev libcjson-dev libpcre2-dev libcurl4-openssl-dev \
      cuda-nvcc-${CUDA_PKG} cuda-cudart-dev-${CUDA_PKG} libcublas-dev-${CUDA_PKG} libnccl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr \
      -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc \
 && cmake --build /build -j"$(nproc)" --target dsinfer \
 && install -D -m 0755 /build/dsinfer /out/usr/bin/dsinfer \
 && install -D -m 0644 deploy/docker/dsinfer.json /out/etc/dsinfer/dsinfer.json

FROM debian:${DEBIAN_TAG} AS runtime
ARG CUDA_PKG
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=build /etc/apt/sources.list.d/cuda-debian12-x86_64.list /etc/apt/sources.list.d/
COPY --from=build /usr/share/keyrings/cuda-archive-keyring.gpg /usr/share/keyrings/
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
      libssl3 libmicrohttpd12 libgnutls30 libcjson1 libpcre2-8-0 libgomp1 \
      cuda-cudart-${CUDA_PKG} libcublas-${CUDA_PKG} libnccl2 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/dsinfer --no-create-home \
      --shell /usr/sbin/nologin dsinfer \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/dsinfer \
 && install -d -m 0755 /models
COPY --from=build /out/ /
ENV LD_LIBRARY_PATH=/usr/local/cuda/lib64 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
EXPOSE 8443
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=15m \
  CMD ["curl", "-fsk", "https://127.0.0.1:8443/health/live"]
ENTRYPOINT ["/usr/bin/dsinfer", "serve"]
CMD ["--config", "/etc/dsinfer/dsinfer.json"]
