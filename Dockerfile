# syntax=docker/dockerfile:1.7
#
# One multi-stage build for every Confab deployable. Pick the image with `--target`:
#
#   docker buildx build --target api                -t confab-api .
#   docker buildx build --target persister          -t confab-persister .
#   docker buildx build --target indexer            -t confab-indexer .
#   docker buildx build --target counter-reconciler -t confab-counter-reconciler .
#   docker buildx build --target operator           -t confab-operator .
#
# Each final image holds one binary (`/usr/local/bin/confab-<name>`, also the entrypoint) on
# distroless `cc` (glibc, libgcc, CA certificates, no shell), running as uid/gid 65532 (`nonroot`).
# SQL migrations are embedded in `confab-api` at compile time (`confab-api migrate` applies them).
#
# Compilation is cached across builds with BuildKit cache mounts (cargo registry, git checkouts and
# the target directory), so a change in one service recompiles only that crate and what depends on
# it. Build args:
#   CARGO_PROFILE   cargo profile, `release` (default) or `dev` (faster builds for local loops)
#   RUST_IMAGE      builder image (default rust:1-bookworm)
#   RUNTIME_IMAGE   base of the final images (default gcr.io/distroless/cc-debian12:nonroot)

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

############################################################################################
# Sources: the whole workspace (cargo needs every member's manifest to load the workspace).
############################################################################################
FROM ${RUST_IMAGE} AS source
ARG CARGO_PROFILE=release
# Incremental compilation follows the profile (on for dev, off for release).
ENV CARGO_PROFILE=${CARGO_PROFILE} \
    CARGO_NET_RETRY=10 \
    CARGO_TERM_COLOR=never
WORKDIR /src

# build-bin PACKAGE: builds the binary of the same name from the workspace package PACKAGE and
# installs it as /out/PACKAGE. `install -p` keeps the modification time of an unchanged binary, so
# an image whose service did not change gets an identical layer.
COPY --chmod=0755 <<'EOF' /usr/local/bin/build-bin
#!/bin/sh
set -eu
pkg="$1"
case "$CARGO_PROFILE" in
  dev|test) dir=debug ;;
  release|bench) dir=release ;;
  *) dir="$CARGO_PROFILE" ;;
esac
cargo build --locked --profile "$CARGO_PROFILE" -p "$pkg" --bin "$pkg"
install -D -p -m 0755 "target/$dir/$pkg" "/out/$pkg"
EOF

COPY Cargo.toml Cargo.lock ./
COPY migrations ./migrations
COPY services ./services
COPY tests ./tests

############################################################################################
# One build stage per binary, so `--target api` compiles only what the api needs.
# The target directory is one shared cache; `sharing=locked` serialises concurrent builds on it.
############################################################################################
FROM source AS build-api
RUN --mount=type=cache,id=confab-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=confab-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=confab-target,target=/src/target,sharing=locked \
    build-bin confab-api

FROM source AS build-persister
RUN --mount=type=cache,id=confab-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=confab-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=confab-target,target=/src/target,sharing=locked \
    build-bin confab-persister

FROM source AS build-indexer
RUN --mount=type=cache,id=confab-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=confab-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=confab-target,target=/src/target,sharing=locked \
    build-bin confab-indexer

FROM source AS build-counter-reconciler
RUN --mount=type=cache,id=confab-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=confab-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=confab-target,target=/src/target,sharing=locked \
    build-bin confab-counter-reconciler

FROM source AS build-operator
RUN --mount=type=cache,id=confab-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=confab-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=confab-target,target=/src/target,sharing=locked \
    build-bin confab-operator

############################################################################################
# Runtime images.
############################################################################################
FROM ${RUNTIME_IMAGE} AS runtime
# Relative paths (e.g. the embedded index's default ./confab-index) land in the home of `nonroot`.
WORKDIR /home/nonroot
USER 65532:65532
LABEL org.opencontainers.image.vendor="Confab" \
      org.opencontainers.image.licenses="Apache-2.0"
# mimalloc (every binary's allocator) commits memory as it is used rather than a whole arena at
# once: an idle HTTP connection (a live subscriber) then costs ~16 KB of resident memory instead
# of ~28 KB (docs/benchmarks.md, Live delivery).
ENV MIMALLOC_ARENA_EAGER_COMMIT=0

FROM runtime AS persister
COPY --link --from=build-persister /out/confab-persister /usr/local/bin/confab-persister
LABEL org.opencontainers.image.title="confab-persister" \
      org.opencontainers.image.description="Consumes chat and message events from JetStream and writes them to MySQL"
# admin: /healthz, /readyz, /metrics
EXPOSE 9091
ENTRYPOINT ["/usr/local/bin/confab-persister"]

FROM runtime AS indexer
COPY --link --from=build-indexer /out/confab-indexer /usr/local/bin/confab-indexer
LABEL org.opencontainers.image.title="confab-indexer" \
      org.opencontainers.image.description="Indexes message bodies for search; serves the embedded index"
# internal search endpoint, admin
EXPOSE 8081 9092
ENTRYPOINT ["/usr/local/bin/confab-indexer"]

FROM runtime AS counter-reconciler
COPY --link --from=build-counter-reconciler /out/confab-counter-reconciler /usr/local/bin/confab-counter-reconciler
LABEL org.opencontainers.image.title="confab-counter-reconciler" \
      org.opencontainers.image.description="Keeps chats_count and messages_count fresh"
EXPOSE 9093
ENTRYPOINT ["/usr/local/bin/confab-counter-reconciler"]

FROM runtime AS operator
COPY --link --from=build-operator /out/confab-operator /usr/local/bin/confab-operator
LABEL org.opencontainers.image.title="confab-operator" \
      org.opencontainers.image.description="Reconciles Application custom resources against the Confab admin API"
EXPOSE 9094
ENTRYPOINT ["/usr/local/bin/confab-operator"]

# Last, so a plain `docker build .` produces the api image.
FROM runtime AS api
COPY --link --from=build-api /out/confab-api /usr/local/bin/confab-api
LABEL org.opencontainers.image.title="confab-api" \
      org.opencontainers.image.description="The Confab HTTP API (confab-api migrate applies the SQL migrations)"
# tenant HTTP API, admin
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/confab-api"]
