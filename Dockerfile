# Fly.io (or any container host). DATA_DIR must be a mounted volume: fly volumes create data; [mounts] destination="/data"
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 DATA_DIR=/data PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY requirements.txt pyproject.toml README.md ./
COPY bot ./bot
COPY core ./core
COPY config ./config
RUN pip install -r requirements.txt
CMD ["python", "-m", "bot"]
