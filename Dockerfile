# syntax=docker/dockerfile:1
# Build stage: build a wheel and install it with its dependencies into a virtualenv.
FROM python:3.12-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY sts ./sts
COPY conformance ./conformance
COPY migrations ./migrations
RUN python -m venv /opt/sts \
 && /opt/sts/bin/pip install --upgrade pip \
 && /opt/sts/bin/pip install .

# Runtime stage: no compilers, no sources, a non-root user.
FROM python:3.12-slim
RUN groupadd --system --gid 10001 sts \
 && useradd --system --uid 10001 --gid sts --home-dir /var/lib/sts --create-home sts
COPY --from=build /opt/sts /opt/sts
WORKDIR /var/lib/sts
ENV PATH=/opt/sts/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    STS_HOST=0.0.0.0 \
    STS_PORT=8080 \
    STS_CONFIG=/etc/sts/sts.yaml \
    STS_DATABASE_URL=sqlite:////var/lib/sts/sts.db
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["sts"]
CMD ["serve"]
