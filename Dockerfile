# One image for every Switchboard service: `switchboard run <service>`, or `switchboard migrate`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the package needs; tests, docs and local state stay out (see .dockerignore).
COPY pyproject.toml ./
COPY shared ./shared
COPY services ./services
COPY switchboard ./switchboard
COPY deploy ./deploy
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin switchboard

USER switchboard

# Inside a container the services must listen beyond loopback.
ENV SWITCHBOARD_HTTP_HOST=0.0.0.0
EXPOSE 8001 8002 8003 8004

ENTRYPOINT ["switchboard"]
CMD ["run", "assigner"]
