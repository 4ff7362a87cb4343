# tokenbook serve: the ext_proc service (gRPC, 50051) and its /metrics (9464).
#
#   docker build -t tokenbook .
#   docker run --rm -p 50051:50051 -p 9464:9464 -e TOKENBOOK_REDIS_URL=redis://redis:6379/0 tokenbook
#
# The image holds the package and its dependencies only: no tests, no recorded corpus (the
# compose demo mounts tests/corpus into the fake provider).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# pyproject.toml names README.md as the package's readme: both are needed to build it.
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && rm -rf /app/src /app/build

# An unprivileged user; its home holds the ledger spool (bookings kept while Redis is down),
# which is where a volume belongs.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/tokenbook --create-home tokenbook \
    && mkdir -p /var/lib/tokenbook/spool && chown -R tokenbook:tokenbook /var/lib/tokenbook
ENV TOKENBOOK_LEDGER_SPOOL_DIR=/var/lib/tokenbook/spool
USER 10001:10001
WORKDIR /var/lib/tokenbook

EXPOSE 50051 9464

# The gRPC health service: SERVING while tokenbook takes streams, NOT_SERVING while it drains.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys; from tokenbook.extproc.probe import serving; sys.exit(0 if serving('127.0.0.1:50051') else 1)"]

# SIGTERM starts the graceful drain (drain_timeout_s, default 20 s): give `docker stop` longer.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tokenbook"]
CMD ["serve", "--listen", "0.0.0.0:50051", "--metrics-listen", "0.0.0.0:9464"]
