# deepshield web app (Gradio UI + REST API) on a CUDA runtime; works on CPU too.
#   docker build -t deepshield .
#   docker run --gpus all -p 7860:7860 -v deepshield-data:/data deepshield
# Ubuntu 22.04: its Python 3.10 has wheels of every dependency (the face detector `yuface` has none
# for 3.12, the Python of Ubuntu 24.04).
FROM nvidia/cuda:12.8.1-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/data/huggingface \
    DEEPSHIELD_CACHE_DIR=/data/deepshield \
    DEEPSHIELD_MODELS_DIR=/data/models \
    HOST=0.0.0.0 \
    PORT=7860 \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 deepshield \
    && mkdir -p /data /app /opt/venv \
    && chown -R deepshield:deepshield /data /app /opt/venv

USER deepshield
WORKDIR /app

# Dependencies first (cached layer). On Linux x86_64 the PyPI torch==2.13.0 wheel is the CUDA build.
COPY --chown=deepshield:deepshield requirements.txt constraints.txt ./
RUN python3 -m venv /opt/venv \
    && grep -v '^-e ' requirements.txt > /tmp/requirements.lock \
    && pip install -r /tmp/requirements.lock -c constraints.txt

COPY --chown=deepshield:deepshield . .
RUN pip install --no-deps -e .

# Weights downloaded from the Hub and converted checkpoints live here: mount a volume.
VOLUME ["/data"]
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${PORT}/health" || exit 1
CMD ["python", "app.py"]
