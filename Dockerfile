# hearth: multi-stage build, small non-root runtime image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY benches benches
RUN cargo build --release --locked --bin hearth

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
ENTRYPOINT ["hearth"]
CMD ["serve"]
