# rtgw: the realtime gateway. Build: docker build -t rtgw .   Run: see docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A dedicated unprivileged user; the gateway never needs root.
RUN groupadd --system --gid 10001 rtgw \
    && useradd --system --uid 10001 --gid rtgw --home-dir /home/rtgw --create-home \
       --shell /usr/sbin/nologin rtgw

WORKDIR /app

# The project metadata first, then the sources; `pip install .` builds and installs the package
# and its `rtgw` console script.
COPY pyproject.toml README.md ./
COPY gateway/ ./gateway/
COPY channels/ ./channels/
COPY supabase/ ./supabase/
RUN pip install . \
    && rm -rf build ./*.egg-info

ENV RTGW_HOST=0.0.0.0 \
    RTGW_PORT=8000 \
    RTGW_CHANNELS=/app/channels

USER rtgw

EXPOSE 8000

# Liveness of the process (slim images have no curl): python's urllib, non-zero exit on failure.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]

CMD ["rtgw", "serve"]
