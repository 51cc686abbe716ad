# The goatclaw command in a container:
#   docker build -t goatclaw .
#   docker run --rm goatclaw --version
#   docker run --rm --user "$(id -u):$(id -g)" -e HOME=/tmp -v "$PWD:/work" goatclaw apply pipelines/quickstart.yaml
#   docker run --rm -p 8750:8750 --user "$(id -u):$(id -g)" -e HOME=/tmp -v "$PWD:/work" goatclaw serve
# The current folder is mounted as /work (the workspace: goatclaw.yaml, pipelines, the store).
# `serve` listens on 0.0.0.0:8750 inside the container (GOATCLAW_SERVE_HOST below); see docs/serve.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /build
COPY pyproject.toml README.md ./
COPY goatclaw ./goatclaw
# the default install runs every built-in task, llm included (litellm is imported only when one runs);
# the serve extra adds the HTTP API (starlette, uvicorn, argon2-cffi, pyotp), imported only by `goatclaw serve`
# and `goatclaw users|tokens`; goatclaw-pipelines comes from this folder, never from an index
RUN pip install ".[serve]" && rm -rf /build

RUN useradd --create-home --uid 10001 goatclaw
USER goatclaw
WORKDIR /work
# `goatclaw serve` in a container must be reachable through the published port, not only from inside it
ENV GOATCLAW_SERVE_HOST=0.0.0.0 \
    GOATCLAW_SERVE_PORT=8750
EXPOSE 8750

ENTRYPOINT ["goatclaw"]
CMD ["--help"]
