# syntax=docker/dockerfile:1
# The controller image: a release build of the `iter8` binary on distroless (glibc and CA
# certificates, no shell, no package manager), running as the non-root user 65532 that the
# controller chart's pod securityContext asks for. The chart passes `controller ...` as args.
#
#   docker build -t iter8-rs/iter8:0.1.0 .
#   helm upgrade --install iter8 charts/controller --set image=iter8-rs/iter8:0.1.0

# The toolchain the workspace is developed and tested with.
ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Every workspace member's manifest must be present for cargo to load the workspace; only the
# `iter8` package and its dependencies are built.
COPY Cargo.toml Cargo.lock ./
COPY crates crates
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p iter8 \
 && install -D -m 0755 target/release/iter8 /out/iter8

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/iter8 /usr/local/bin/iter8
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/iter8"]
CMD ["controller"]
