# Build: docker build -t twitch-cds .   Run: docker run -p 8080:8080 twitch-cds
# Stage 1 builds the virtualenv (pip, wheels, caches stay behind); stage 2 is the runtime only.
FROM python:3.11-slim AS build
WORKDIR /src
# The locked runtime versions, every file checked against its hash (make lock), then the project
# itself without resolving anything; pip check fails when pyproject.toml has outgrown the lock.
COPY requirements.txt ./
RUN python -m venv /venv \
    && /venv/bin/pip install --no-cache-dir --require-hashes -r requirements.txt
COPY pyproject.toml README.md ./
COPY service ./service
RUN /venv/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
    && /venv/bin/pip check \
    && find /venv -name '__pycache__' -prune -exec rm -rf {} + \
    && /venv/bin/python -m compileall -q /venv/lib

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home --home-dir /app cds
WORKDIR /app
COPY --from=build /venv /venv
# Data the service reads at run time: the rule set, the contract (/openapi.yaml, /docs) and the
# examples the card viewer offers; gunicorn.conf.py is the serving configuration.
COPY rules ./rules
COPY openapi.yaml gunicorn.conf.py ./
COPY fhir_examples ./fhir_examples
ENV PATH=/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TWITCH_CDS_BIND=0.0.0.0:8080 \
    TWITCH_CDS_RULES_DIR=/app/rules \
    TWITCH_CDS_OPENAPI_PATH=/app/openapi.yaml \
    TWITCH_CDS_EXAMPLES_DIR=/app/fhir_examples \
    TWITCH_CDS_INSTANCE_DIR=/app/instance
# The SQLite file and the development patient-hash key live here; mount a volume to keep them.
RUN mkdir -p /app/instance && chown cds /app/instance
USER 10001
EXPOSE 8080
# On the port gunicorn binds: TWITCH_CDS_BIND, as set here or at `docker run -e`.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
    CMD ["python", "-m", "service.healthcheck"]
# The same command line `make run` and tests/test_deploy.py use (the test checks this line).
CMD ["gunicorn", "-c", "gunicorn.conf.py"]
