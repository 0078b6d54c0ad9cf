# One image for the web app and the GPU workers (compose.yaml runs both).
#   docker build -t text-to-image .                                   # CPU torch
#   docker build -t text-to-image --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
# TORCH_INDEX is one of PyTorch's wheel indexes (pytorch.org lists which CUDA
# versions each torch release has). No model is baked in: the Hugging Face
# cache is a volume (/cache), filled on the first start.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtual environment with torch and the requirements -----------------------
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# torch first, from its own index; requirements.txt leaves torch unpinned, so it is kept.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY requirements.txt requirements-no-deps.txt /tmp/
# spandrel without its torchvision (see requirements-no-deps.txt)
RUN /opt/venv/bin/pip install -r /tmp/requirements.txt \
    && /opt/venv/bin/pip install --no-deps -r /tmp/requirements-no-deps.txt

# --- runtime: the venv and the app, run as a user without root ---------------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/cache/huggingface \
    T2I_CACHE=/cache/text-to-image \
    T2I_INSTANCE=/data/instance
# The folders exist, owned by the app's user, so named volumes mounted there start writable.
RUN useradd --create-home --uid 1000 --user-group app \
    && mkdir -p /cache /data/instance /models /run/gpu-slots \
    && chown app:app /cache /data/instance /models /run/gpu-slots
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv/text-to-image
COPY app/ app/
COPY static/ static/
COPY templates/ templates/
COPY docker/ docker/
USER 1000:1000
EXPOSE 7860
ENTRYPOINT ["python", "-m", "app"]
CMD ["serve", "--host", "0.0.0.0", "--port", "7860"]
