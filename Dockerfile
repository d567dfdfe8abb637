# Production image: Turnout on NVIDIA's CUDA runtime with onnxruntime-gpu.
# onnxruntime-gpu 1.31 is built for CUDA 13 and cuDNN 9; without a GPU it runs on the CPU.
#   docker build -t turnout .
#   docker run --gpus all -p 8000:8000 -p 8001:8001 -v $PWD/config:/config turnout \
#       serve --config /config/turnout.yaml

FROM nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04 AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY turnout ./turnout
COPY protos ./protos
COPY server ./server
COPY router ./router
COPY models ./models
COPY loadtests ./loadtests
RUN python3 -m venv /opt/turnout \
    && /opt/turnout/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/turnout/bin/pip install --no-cache-dir -c constraints.txt .

FROM nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home turnout
COPY --from=build /opt/turnout /opt/turnout
ENV PATH=/opt/turnout/bin:$PATH \
    PYTHONUNBUFFERED=1
USER turnout
WORKDIR /home/turnout
EXPOSE 8000 8001
VOLUME ["/config", "/models"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["turnout"]
CMD ["serve", "--config", "/config/turnout.yaml"]
