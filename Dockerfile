# syntax=docker/dockerfile:1
#
# TokenVault image: wheels built in a throwaway stage, installed into python:3.11-slim with no
# compiler, no pip and no source tree; runs as an unprivileged user on a read-only root filesystem.
#
#   docker build -t tokenvault .
#   docker run --read-only -v tv-data:/data --tmpfs /tmp -p 8080:8080 \
#       -e TOKENVAULT_DATABASE_URL=... -e TOKENVAULT_KMS=vault -e VAULT_ADDR=... tokenvault
#
# `tokenvault init` (idempotent) must run once against the same database and key provider before
# `serve`; docker-compose.yml shows one way.

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: every dependency and the project as wheels ----------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Dependencies first, from pyproject's list pinned by constraints.txt: this layer is rebuilt only when
# those two files change, not on every source edit. Every pinned dependency ships manylinux wheels for
# CPython 3.11 (x86_64 and aarch64), so no compiler is needed; if one ever is, install it here, never below.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > requirements.txt \
 && pip wheel --wheel-dir /wheels --constraint constraints.txt --requirement requirements.txt

# Then the project itself (pure Python), without touching the dependency wheels.
COPY README.md ./
COPY api ./api
COPY vault ./vault
COPY kms ./kms
RUN pip wheel --wheel-dir /wheels --no-deps .

# --- final: runtime only ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS final

LABEL org.opencontainers.image.title="TokenVault" \
      org.opencontainers.image.description="Tokenization vault for card data and personal data"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    TOKENVAULT_DATA_DIR=/data \
    TOKENVAULT_AUDIT_CHECKPOINT_DIR=/audit-checkpoints \
    TOKENVAULT_BIND=0.0.0.0:8080 \
    HOME=/home/tokenvault \
    TMPDIR=/tmp

# A fixed, unprivileged uid/gid with no login shell; /data and /audit-checkpoints belong to it (a
# named volume mounted there inherits this ownership the first time). The checkpoint log sits on its
# own volume, apart from the data: mount one the database administrators cannot write (README, Audit).
RUN groupadd --system --gid 10001 tokenvault \
 && useradd --system --uid 10001 --gid tokenvault --home-dir /home/tokenvault --create-home \
        --shell /usr/sbin/nologin tokenvault \
 && mkdir -p /data /audit-checkpoints \
 && chown tokenvault:tokenvault /data /audit-checkpoints \
 && chmod 0700 /data /audit-checkpoints

# Install from the builder's wheels without copying them into a layer (BuildKit bind mount), then
# remove the installers: nothing in the running image can fetch or build code.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels tokenvault \
 && python -c "from importlib.resources import files; assert files('vault.storage').joinpath('migrations/env.py').is_file(); assert files('vault.access').joinpath('policy.toml').is_file()" \
 && tokenvault --help >/dev/null \
 && pip uninstall --yes pip setuptools wheel \
 && rm -rf /root/.cache /usr/local/lib/python3.11/ensurepip

USER 10001:10001
WORKDIR /home/tokenvault

# Everything the service writes: /data (SQLite, local keyring), /audit-checkpoints (the audit
# checkpoint log) and /tmp (Prometheus multiprocess files). With these as volumes the root
# filesystem can be mounted read-only.
VOLUME ["/data", "/audit-checkpoints", "/tmp"]

EXPOSE 8080

# No curl in slim: Python's urllib. urlopen raises on any status >= 400, so a 503 from /readyz
# (database or key provider down) marks the container unhealthy.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=4); sys.exit(0 if r.status == 200 else 1)"]

# `tokenvault serve` execs the server (granian, api/http/server.py), so its master is PID 1 and receives
# SIGTERM directly (requests in flight finish, workers end within 30 s). granian reads every connection in
# its Rust event loop, so slow or idle clients hold sockets, not workers: the port can be published
# without a buffering proxy (docs/scaling.md). Run with `--init` / compose `init: true` to reap strays.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tokenvault"]
CMD ["serve", "--bind", "0.0.0.0:8080"]
