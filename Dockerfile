# syntax=docker/dockerfile:1
# The base image is an argument so that a build without Docker Hub can name a mirror of it.
ARG PYTHON_IMAGE=python:3.12-slim

# Build stage: install the package and its dependencies into a virtualenv.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# Dependencies first, from pyproject.toml alone: a change to the sources reuses this layer.
COPY pyproject.toml ./
RUN python -m venv /opt/sts \
 && /opt/sts/bin/pip install --upgrade pip \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && /opt/sts/bin/pip install -r requirements.txt "setuptools>=68"
COPY README.md alembic.ini ./
COPY sts ./sts
COPY conformance ./conformance
COPY migrations ./migrations
# No download from here on; bytecode is compiled here, once, as the runtime root filesystem
# may be read-only.
RUN /opt/sts/bin/pip install --no-deps --no-build-isolation . \
 && /opt/sts/bin/python -m compileall -q /opt/sts

# Runtime stage: no compilers, no sources, a non-root user, nothing written outside volumes.
FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 sts \
 && useradd --uid 10001 --gid sts --no-create-home --home-dir /var/lib/sts --shell /usr/sbin/nologin sts \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/sts
COPY --from=build /opt/sts /opt/sts
WORKDIR /var/lib/sts
# /var/lib/sts holds the SQLite database when no STS_DATABASE_URL is given: mount a volume
# there for that. With PostgreSQL the broker writes no file at all.
ENV PATH=/opt/sts/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STS_HOST=0.0.0.0 \
    STS_PORT=8080 \
    STS_CONFIG=/etc/sts/sts.yaml \
    STS_DATABASE_URL=sqlite:////var/lib/sts/sts.db
USER 10001:10001
EXPOSE 8080
# `sts probe` reads STS_HOST, STS_PORT and STS_TLS_CERT like `sts serve`: the check follows the
# configured port and scheme. Set the port with STS_PORT, not with a `--port` flag.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["sts", "probe", "ready", "--timeout", "3"]
ENTRYPOINT ["sts"]
CMD ["serve"]
