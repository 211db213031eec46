# Multi-stage build: compile in the Rust image, run in a slim Debian.
# Queries are checked at run time and migrations are embedded, so the build
# needs no database. `.ci/docker-context` builds from exactly what this stage
# copies, so a file the compile reads (the /demo page is embedded) cannot be
# left out.
FROM rust:1.95-bookworm AS build
WORKDIR /src
ENV SQLX_OFFLINE=true
COPY Cargo.toml Cargo.lock ./
COPY migrations migrations
COPY demo demo
COPY src src
RUN cargo build --release --locked --bin metacast

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/metacast /usr/local/bin/metacast
USER nobody
EXPOSE 8080
ENV METACAST_LISTEN=0.0.0.0:8080
ENTRYPOINT ["metacast"]
CMD ["serve"]
