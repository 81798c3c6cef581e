# herald's container image: built in a Rust image, run from a distroless one
# (glibc and CA certificates only: no shell, no package manager), as a non-root
# user, with a read-only-friendly layout (herald writes no files).
#
#   docker build -t herald:0.1.0 .        (or: podman build / buildah bud)
#   docker run --rm -p 8080:8080 -e HERALD_PUBLISHER_TOKEN=$(openssl rand -hex 24) herald:0.1.0
#
# Open files: pass `--ulimit nofile=1048576:1048576` (docker/podman run) when the
# runtime's default is low; herald raises its soft limit to the hard one itself.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The release profile keeps line tables for profiling (debug = 1); the image
# gets the binary without them (~60 MB -> a few MB), and the build stage keeps
# them beside it: `docker build --target build -t herald-build .` then
# `docker cp $(docker create herald-build):/herald.debug .` for perf/gdb.
RUN cargo build --release --locked --bin herald \
    && objcopy --only-keep-debug target/release/herald /herald.debug \
    && objcopy --strip-debug --strip-unneeded --add-gnu-debuglink=/herald.debug \
        target/release/herald /herald

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /herald /herald
# Listen on every interface inside the container; publishing then needs a
# credential (HERALD_PUBLISHER_TOKEN or a JWT key), or
# HERALD_ALLOW_ANONYMOUS_PUBLISH=true behind a proxy that guards /api/broadcast.
ENV HERALD_LISTEN=0.0.0.0:8080 \
    HERALD_LOG_FORMAT=json
EXPOSE 8080
USER 65532:65532
# SIGTERM drains (every stream gets a retry: hint) and exits within
# --grace-period; give `docker stop -t` / the orchestrator a little more.
STOPSIGNAL SIGTERM
# The check finds the main process's own --listen and --tls-cert (flags given
# to `docker run … herald --listen 0.0.0.0:9000` included): it reads them from
# PID 1, which is herald here.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/herald", "--health-check"]
ENTRYPOINT ["/herald"]
