# syntax=docker/dockerfile:1
# The sink image: `docker build -t cdc-sink:local .` (the tag the harness's Docker backend
# and docker-compose.yml use).

# --- build: the workspace (Cargo needs every member's manifest), only the sink compiled.
FROM rust:1-bookworm AS build
# rdkafka builds librdkafka from source (configure + make, cmake for some deps), with zlib.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake pkg-config python3 zlib1g-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the registry and incremental artifacts between builds; the binary is
# copied out because the cache is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p sink \
 && install -D -m 0755 target/release/sink /out/sink

# --- runtime: slim Debian, non-root.
FROM debian:bookworm-slim
# ca-certificates: TLS to brokers/MongoDB Atlas; libssl3: librdkafka and PostgreSQL TLS; curl: the health check.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl zlib1g libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin sink
COPY --from=build /out/sink /usr/local/bin/sink
COPY docker/sink/sink.toml /etc/sink/sink.toml
USER 10001:10001
EXPOSE 9095
ENV RUST_LOG=info
# /healthz: the process is alive; readiness (/readyz) is what orchestrators wait on.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD curl -fsS http://127.0.0.1:9095/healthz || exit 1
# SIGTERM drains in-flight batches and commits offsets (up to [kafka] drain_timeout).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/sink"]
CMD ["--config", "/etc/sink/sink.toml"]
