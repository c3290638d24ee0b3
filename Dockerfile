# syntax=docker/dockerfile:1
# ivig-cds production image.
#   docker build -t ivig-cds .
#   docker run -p 8080:8080 -e IVIG_CDS_DATABASE_URL=... -e IVIG_CDS_SECURITY_TRUSTED_ISSUERS=... \
#       -e IVIG_CDS_SECURITY_FHIR_SERVER_ALLOWLIST=... -e IVIG_CDS_SECURITY_PUBLIC_BASE_URL=https://cds.example.org ivig-cds
# Configuration only by IVIG_CDS_* variables and mounted files (IVIG_CDS_CONFIG, jwks_file paths):
# nothing site-specific is baked in. See README "Deployment" and deploy/compose.yaml.

# ---- build: the project as a wheel, installed with its dependencies into a venv -----------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# .dockerignore admits only what the wheel is built from
COPY . .
# every dependency ships manylinux wheels, so no compiler is needed even here
RUN python -m pip wheel --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/ivig-cds \
 && python -m pip --python /opt/ivig-cds/bin/python install --no-index --find-links /wheels /wheels/ivig_cds-*.whl

# ---- runtime: the venv and nothing else (no pip in it, no wheels, no build tools) ---------------
FROM python:3.11-slim
LABEL org.opencontainers.image.title="ivig-cds" \
      org.opencontainers.image.description="IVIG-stewardship CDS Hooks 2.0.1 service" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/ivig-cds/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    IVIG_CDS_PROFILE=production \
    IVIG_CDS_DATA_DIR=/var/lib/ivig-cds \
    PROMETHEUS_MULTIPROC_DIR=/run/ivig-cds/prometheus \
    IVIG_CDS_METRICS_PORT=9464 \
    WEB_CONCURRENCY=2
RUN groupadd --system --gid 10001 ivig-cds \
 && useradd --system --uid 10001 --gid ivig-cds --home-dir /var/lib/ivig-cds --no-create-home \
        --shell /usr/sbin/nologin ivig-cds \
 && mkdir -p /var/lib/ivig-cds /run/ivig-cds/prometheus \
 && chown -R 10001:10001 /var/lib/ivig-cds /run/ivig-cds
COPY --from=build /opt/ivig-cds /opt/ivig-cds
# numeric, so that Kubernetes' runAsNonRoot can verify it
USER 10001:10001
WORKDIR /var/lib/ivig-cds
VOLUME ["/var/lib/ivig-cds"]
# the hooks' port, and the metrics port (GET /metrics, for Prometheus only)
EXPOSE 8080 9464
# slim images have no curl: the venv's Python asks the liveness endpoint
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["ivig-cds"]
CMD ["serve", "--production", "--host", "0.0.0.0", "--port", "8080"]
