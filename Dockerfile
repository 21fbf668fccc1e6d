# syntax=docker/dockerfile:1
# Multi-stage: build a virtualenv from the pinned lock, then copy it into a slim runtime image.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.lock ./
RUN pip install -r requirements.lock

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DATABASE_URL=sqlite:////data/registry.db \
    ENVIRONMENT=production \
    SECRET_KEY_FILE=/data/secret_key
RUN groupadd --system app && useradd --system --gid app --home-dir /srv --no-create-home app \
    && mkdir -p /data && chown app:app /data
WORKDIR /srv
COPY --from=build /opt/venv /opt/venv
# Migrations, seeds and alembic.ini sit beside the package, where app/config.py looks for them.
COPY --chown=app:app alembic.ini ./
COPY --chown=app:app migrations ./migrations
COPY --chown=app:app seeds ./seeds
COPY --chown=app:app app ./app
USER app
EXPOSE 8000
VOLUME ["/data"]
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status == 200 else 1)"
# Migrate, then serve (exec form: uvicorn is PID 1's child via sh -c, and receives SIGTERM).
CMD ["sh", "-c", "python -m app migrate && exec python -m app serve --host 0.0.0.0 --port 8000"]
