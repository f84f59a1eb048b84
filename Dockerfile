# syntax=docker/dockerfile:1
#
# runvisor's container image: one image for every role (`consume`, `api`, `migrate`, `dev`, …);
# the command picks the role. Build with BuildKit (the default of `docker build` since Docker 23 and
# of `docker compose`; with docker-compose 1.29 set DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1):
#
#   docker build -t runvisor:local .
#   docker run --rm -p 8000:8000 runvisor:local dev        # everything in one process, embedded defaults
#
# Dependency caching: BuildKit cache mounts (cargo registry, git checkouts and target/), not
# cargo-chef. Why:
# - a cache mount keeps every compiled crate between builds, so a change to Cargo.lock recompiles only
#   the crates that changed, while cargo-chef's "cook" layer is all-or-nothing and rebuilds every
#   dependency — including librdkafka's slow ./configure && make — whenever the lock file changes;
# - nothing extra to install or trust in the builder (cargo-chef is another binary and another
#   stage), and no recipe stage that has to mirror the workspace layout (three members here);
# - the cost: the cache lives in the builder's local storage, not in image layers, so it is not
#   shared through `--cache-from`/`--cache-to` registries; a CI runner with an empty builder does one
#   cold build (a few minutes on two cores).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# --- build: the release binary -------------------------------------------------------------------
# rust:<version>-bookworm (buildpack-deps) already has what rdkafka-sys's bundled librdkafka build
# needs — bash for its mklove ./configure, make, gcc/g++ — and zlib1g-dev for libz-sys (librdkafka's
# zlib support links the system libz dynamically; libz.so.1 is in every Debian image). No OpenSSL:
# librdkafka is built without SSL and HTTPS/PostgreSQL TLS use rustls with compiled-in roots.
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
# Redeclared so the cache id below can use it (an ARG before FROM is not visible inside a stage).
ARG RUST_VERSION
WORKDIR /src

# Only what the build reads, so target/, .git and local databases never enter the build (with or
# without a .dockerignore), and edits to docs or tests do not invalidate this layer. A new workspace
# member or a new include_str!/include_bytes! source outside these paths must be added here
# (tests/deployment.rs checks both).
COPY Cargo.toml Cargo.lock askama.toml ./
COPY config ./config
COPY examples ./examples
COPY entity ./entity
COPY migration ./migration
COPY src ./src

# target/ is a cache mount, so the binary is copied out in the same step. `sharing=locked` makes
# two concurrent builds take turns instead of corrupting one cargo cache.
RUN --mount=type=cache,id=runvisor-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=runvisor-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=runvisor-target-${RUST_VERSION},target=/src/target,sharing=locked \
    cargo build --release --locked --bin runvisor \
    && install -D -m 0755 target/release/runvisor /out/runvisor

# --- runtime: glibc, CA certificates, the binary --------------------------------------------------
# debian:bookworm-slim rather than distroless/cc: the binary links libz.so.1 (librdkafka's zlib),
# which distroless/cc does not ship, and the image keeps /bin/sh for the HEALTHCHECK below and for
# debugging. It matches the builder's glibc exactly (same Debian release).
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# ca-certificates: the system trust store for https:// agents. Today's build verifies TLS against the
# Mozilla roots compiled into it (reqwest/sqlx with webpki-roots), so an agent behind a private CA
# needs reqwest's native-roots feature; with the store already here that is a rebuild, not a new
# image layout. ~200 kB.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 runvisor \
    && useradd --system --uid 10001 --gid runvisor --home-dir /var/lib/runvisor --shell /usr/sbin/nologin runvisor \
    && install -d -o runvisor -g runvisor -m 0750 /var/lib/runvisor

COPY --from=build /out/runvisor /usr/local/bin/runvisor
# The defaults (config/default.toml) are compiled into the binary: `runvisor config` prints them.
# The production settings ship as a file to pass with --config; mount another over it to change it.
COPY config/production.toml /etc/runvisor/production.toml

# Numeric user, so orchestrators that require a non-root user (runAsNonRoot) can verify it.
USER 10001:10001
# The embedded SQLite file of `dev`/`run` (sqlite://runvisor.db) lands here, writable by the user.
WORKDIR /var/lib/runvisor

# Inside a container a loopback listener is unreachable: listen on every interface by default.
# 8000 is the platform's API port; 9464 serves /metrics and /health of `consume`.
ENV RUNVISOR__API__LISTEN=0.0.0.0:8000 \
    RUNVISOR__METRICS__LISTEN=0.0.0.0:9464
EXPOSE 8000 9464

# runvisor drains on SIGTERM (executor.shutdown_grace_ms, 30 s by default): give containers a stop
# timeout above it (docker stop -t 45, compose stop_grace_period) or runs are cut off by SIGKILL.
STOPSIGNAL SIGTERM

# The image has no curl: `runvisor healthcheck` probes a URL. `consume` answers /health on
# metrics.listen (9464), `api` and `dev` on api.listen (8000, the default URL); the shell form tries
# the first and falls back to the second, so one image is healthy in every long-running role.
HEALTHCHECK --interval=15s --timeout=12s --start-period=30s --retries=3 \
    CMD runvisor healthcheck --url http://127.0.0.1:9464/health || runvisor healthcheck

ENTRYPOINT ["runvisor"]
# The executor is the image's main role; compose files name the command of every service anyway.
CMD ["consume"]
