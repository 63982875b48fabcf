# The stocksync image: one image for `stocksync migrate`, the Celery worker, beat and Flower.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

COPY pyproject.toml README.md alembic.ini ./
COPY domain ./domain
COPY worker ./worker
COPY tasks ./tasks
COPY sandbox ./sandbox
COPY stocksync ./stocksync
COPY migrations ./migrations

# Installed as root, run as a user without privileges; /var/lib/stocksync holds beat's schedule.
RUN pip install . \
    && useradd --system --create-home --uid 10001 stocksync \
    && mkdir -p /var/lib/stocksync \
    && chown stocksync:stocksync /var/lib/stocksync

USER stocksync
ENV STOCKSYNC_DATA_DIR=/var/lib/stocksync

EXPOSE 5555
CMD ["stocksync", "run"]
