# hearth: multi-stage build, small non-root runtime image.
#
# Build stage: everything `cargo build` reads — the manifest and lock file, the sources, the
# migrations (embedded into the binary by sqlx::migrate!) and the benchmark target the manifest
# declares. A test (tests/deploy_files.rs) checks this list against Cargo.toml.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY benches benches
RUN cargo build --release --locked --bin hearth

# Runtime stage: the binary, the example configuration and a data directory owned by an
# unprivileged user. Migrations are inside the binary; no curl is needed for the health check.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/hearth hearth \
    && mkdir -p /var/lib/hearth && chown hearth:hearth /var/lib/hearth
COPY --from=build /src/target/release/hearth /usr/local/bin/hearth
COPY deploy/hearth.toml /etc/hearth/hearth.toml
USER hearth
ENV HEARTH_CONFIG=/etc/hearth/hearth.toml \
    HEARTH_LISTEN=0.0.0.0:8080 \
    HEARTH_DATA_DIR=/var/lib/hearth
VOLUME /var/lib/hearth
EXPOSE 8080
# `hearth healthcheck` GETs http://127.0.0.1:8080/readyz (database and blob store reachable)
# and exits 0 when it answers 2xx. If you change HEARTH_LISTEN's port, pass --url.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["hearth", "healthcheck"]
ENTRYPOINT ["hearth"]
CMD ["serve"]
