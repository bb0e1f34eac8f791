# Fly.io, Railway (which builds from this file whenever it exists) or any container host.
# DATA_DIR must be a mounted volume: fly volumes create data; [mounts] destination="/data"
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DATA_DIR=/data
WORKDIR /app
# Dependencies before code: this layer is rebuilt when requirements.txt changes, not on every
# code edit. requirements.txt ends with "." (the project itself, for Heroku's buildpack); here
# the code runs from /app instead, so that line is left out.
COPY requirements.txt ./
RUN grep -v '^\.$' requirements.txt > /tmp/deps.txt && pip install -r /tmp/deps.txt && rm /tmp/deps.txt
COPY bot ./bot
COPY core ./core
COPY config ./config
# Not root: a hole in the bot or a dependency does not get the whole container.
RUN useradd --create-home --uid 10001 gateway && mkdir -p /data && chown gateway:gateway /data
USER gateway
# Webhook mode serves GET /healthz on $PORT (bot/webhook.py); polling mode has no server, so
# there the check passes while the process runs.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, sys, urllib.request as u; sys.exit(0) if not os.environ.get('WEBHOOK_URL') else u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=4)"
CMD ["python", "-m", "bot"]
