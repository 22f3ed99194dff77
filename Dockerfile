# syntax=docker/dockerfile:1
# DiLaServe image: every service (`dilaserve gateway|scheduler|planner|worker`) plus the shipped model.
# CPU by default; the compose `gpu` profile builds with TORCH_INDEX_URL=https://pypi.org/simple, whose
# Linux torch wheel bundles CUDA.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# torch first, in its own layer: it is by far the largest and changes least often.
RUN pip install --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
        "torch==${TORCH_VERSION}"

# Dependencies next (from pyproject alone), so code edits do not reinstall them.
COPY pyproject.toml README.md* ./
RUN python -c "import tomllib; print('\n'.join(d for d in tomllib.load(open('pyproject.toml','rb'))['project']['dependencies'] if not d.startswith('torch')))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY shared ./shared
COPY services ./services
COPY tooling ./tooling
COPY lab ./lab
COPY models ./models
# Editable install: the code stays under /app, so default_model_dir() (relative to the package)
# still finds /app/models/dilaserve-tiny. --no-deps: everything is installed above.
RUN pip install --no-deps -e . \
    && useradd --system --uid 10001 --create-home --home-dir /home/dilaserve dilaserve \
    && mkdir -p /app/runs && chown dilaserve /app/runs

USER 10001
EXPOSE 8000 9464
CMD ["dilaserve", "--help"]
