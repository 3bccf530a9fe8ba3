# syntax=docker/dockerfile:1
# One image per service:
#   docker build --build-arg SERVICE=gateway -t selfheal-gateway .
# SERVICE: gateway, policy, pr-controller, notifier; cli (the `selfheal` command); demo-app.
#
# The build stage runs the very cargo command CI runs (scripts/test; e2e/tests/packaging.rs
# checks that they are the same and runs it). The image's optimisation comes from the
# CARGO_PROFILE_DEV_* settings below, not from another command, so what CI tests is what ships.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
ARG SERVICE
WORKDIR /src
ENV CARGO_PROFILE_DEV_OPT_LEVEL=3 \
    CARGO_PROFILE_DEV_DEBUG=0 \
    CARGO_PROFILE_DEV_DEBUG_ASSERTIONS=false \
    CARGO_PROFILE_DEV_OVERFLOW_CHECKS=false \
    CARGO_PROFILE_DEV_INCREMENTAL=false \
    CARGO_PROFILE_DEV_STRIP=symbols
COPY . .
RUN cargo build --workspace --bins --locked
RUN case "$SERVICE" in \
      gateway|policy|pr-controller|notifier) bin="selfheal-$SERVICE" ;; \
      cli) bin=selfheal ;; \
      demo-app) bin=demo-app ;; \
      *) echo "SERVICE must be gateway, policy, pr-controller, notifier, cli or demo-app" >&2; exit 1 ;; \
    esac && install -D "target/debug/$bin" /out/selfheal-service && mkdir -p /out/data

# distroless: no shell, no package manager; uid 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
ARG SERVICE
LABEL org.opencontainers.image.title="selfheal-${SERVICE}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/selfheal-service /usr/local/bin/selfheal-service
# A data directory the service's user owns: a volume mounted here starts with that owner.
COPY --from=build --chown=65532:65532 /out/data /data
COPY deploy/policies/ /etc/selfheal/policies/
USER 65532:65532
ENV SELFHEAL_LOG_FORMAT=json
# Each binary stops on SIGTERM: it takes no new work, finishes what it has, and exits.
STOPSIGNAL SIGTERM
# Health checks without a shell: `selfheal-service --probe http://127.0.0.1:PORT/readyz`.
ENTRYPOINT ["/usr/local/bin/selfheal-service"]
