# The goatclaw command in a container:
#   docker build -t goatclaw .
#   docker run --rm goatclaw --version
#   docker run --rm --user "$(id -u):$(id -g)" -e HOME=/tmp -v "$PWD:/work" goatclaw apply pipelines/quickstart.yaml
# The current folder is mounted as /work (the workspace: goatclaw.yaml, pipelines, the store).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /build
COPY pyproject.toml README.md ./
COPY goatclaw ./goatclaw
# the default install runs every built-in task, llm included (litellm is imported only when one runs);
# goatclaw-pipelines comes from this folder, never from an index
RUN pip install . && rm -rf /build

RUN useradd --create-home --uid 10001 goatclaw
USER goatclaw
WORKDIR /work

ENTRYPOINT ["goatclaw"]
CMD ["--help"]
