# The PostCache image: one static binary on an empty base. `postcache operator` runs the
# controller, `postcache serve` the cache service; the Helm chart runs this image for both.
#
#   docker build -t ghcr.io/postcache/postcache:0.1.0 .
#
# The tests assemble the same image without a container engine (crates/operator/tests/it/image.rs):
# the same musl build (profile `release`; the image's `dist` adds LTO, see Cargo.toml), the same
# single layer (the binary and /data), user, environment, port, entrypoint and command.

FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl \
 && apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked --target x86_64-unknown-linux-musl -p postcache \
 && install -m 0755 target/x86_64-unknown-linux-musl/dist/postcache /postcache \
 && install -d -m 0755 /data

FROM scratch
COPY --from=build /postcache /postcache
COPY --from=build --chown=65532:65532 /data /data
USER 65532:65532
# Run as a container: every interface (so API tokens are required: POSTCACHE_API_TOKENS), the
# embedded SQLite file under /data (mount a volume there). The operator's Pods set both.
ENV POSTCACHE_LISTEN=0.0.0.0:8080 \
    POSTCACHE_DATABASE_URL=sqlite:/data/postcache.db
EXPOSE 8080
ENTRYPOINT ["/postcache"]
CMD ["serve"]
