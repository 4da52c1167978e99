# syntax=docker/dockerfile:1
# mock-idp: built from this repository (workspace member mocks/, package aml-mocks).
# Build context: the repository root (see docker-compose.yml); docker/mock-idp.Dockerfile.dockerignore
# keeps target/, .git and the like out of the context.

# Keep in step with rust-version in the root Cargo.toml (checked by tests/kong_files.rs).
ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p aml-mocks --bin mock-idp \
 && install -D -m 0755 target/release/mock-idp /out/mock-idp

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin mock
COPY --from=build /out/mock-idp /usr/local/bin/mock-idp
USER 10001
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/mock-idp"]
CMD ["--listen", "0.0.0.0:8081"]
