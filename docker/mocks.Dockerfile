# syntax=docker/dockerfile:1
# The mock LlamaParse and OpenAI services: `docpipe mocks` on :8100.
# Build from the repository root: docker build -f docker/mocks.Dockerfile -t docpipe-mocks:dev .
# Runs as uid 10001 with a read-only root filesystem: bytecode is compiled at build time, and
# HOME and every scratch file live in /tmp (an emptyDir in the chart).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/docpipe
COPY pyproject.toml README.md ./
COPY worker/ worker/
COPY api/ api/
COPY operator/ operator/
COPY mocks/ mocks/
# Only the mocks' extra (pyproject.toml): each image installs what its role runs.
RUN /opt/docpipe/bin/pip install --no-cache-dir '.[mocks]' \
    && /opt/docpipe/bin/python -m compileall -q /opt/docpipe

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 docpipe \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
       --shell /usr/sbin/nologin docpipe
COPY --from=build /opt/docpipe /opt/docpipe
ENV PATH=/opt/docpipe/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 10001:10001
WORKDIR /tmp
EXPOSE 8100
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8100/_admin/stats', timeout=2)"]
ENTRYPOINT ["docpipe"]
CMD ["mocks", "--host=0.0.0.0", "--port=8100"]
