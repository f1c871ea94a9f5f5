# Build: docker build -t twitch-cds .   Run: docker run -p 8080:8080 twitch-cds
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN python -m venv /venv && /venv/bin/pip install --no-cache-dir --upgrade pip \
    && /venv/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app cds
WORKDIR /app
COPY --from=build /venv /venv
COPY rules ./rules
ENV PATH=/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TWITCH_CDS_RULES_DIR=/app/rules \
    TWITCH_CDS_INSTANCE_DIR=/app/instance
# The SQLite file and the development patient-hash key live here; mount a volume to keep them.
RUN mkdir -p /app/instance && chown cds /app/instance
USER cds
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"
CMD ["gunicorn", "--bind", "0.0.0.0:8080", "--workers", "2", "service.app:create_app()"]
