# cedm web app (Gradio) on port 7860.
#
# CPU (default base):
#   docker build -t cedm . && docker run -p 7860:7860 -v cedm-data:/data cedm
# CUDA: any CUDA runtime base works; Python is installed below when the base lacks it, and the torch wheel
# from requirements.txt brings its own CUDA libraries (the base only needs a matching driver on the host):
#   docker build -t cedm-cuda --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 .
#   docker run --gpus all -p 7860:7860 -v cedm-data:/data cedm-cuda
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# Everything stays local: no analytics, no model downloads unless allowed (-e CEDM_ALLOW_DOWNLOADS=1 or
# --allow-downloads); workspaces live in the /data volume.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    CEDM_ALLOW_DOWNLOADS=0 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    CEDM_HOME=/data \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# CUDA bases ship without Python; python:* bases already have it (then this installs nothing).
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update && \
        apt-get install -y --no-install-recommends python3 python3-venv python3-pip && \
        rm -rf /var/lib/apt/lists/*; \
    fi && \
    python3 -m venv /opt/venv

WORKDIR /app
# Dependencies first so that code changes do not reinstall them.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY . .
RUN mkdir -p /data
VOLUME /data

EXPOSE 7860
CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]
