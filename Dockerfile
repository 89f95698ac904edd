# nativewatch node agent image (Debian 12, Debian's bcc, the project in a venv).
#
# Every RUN is one step of scripts/image-steps.sh; tests/test_deploy_image.py runs those same steps,
# in this order, on a host (no container engine there), so each is exercised. Keep RUN lines of the
# form `RUN [VAR=value ...] image-steps.sh STEP ARGS`.
#
# Build: docker build -t nativewatch:0.1.0 .
# Kernel headers: the node's, when /lib/modules and /usr/src are mounted (the DaemonSet mounts them
# at /host/lib/modules and /usr/src); otherwise the generic Debian headers baked in here, which are
# enough for the project's uprobe and tracepoint programs.
ARG DEBIAN_IMAGE=debian:bookworm-slim

FROM ${DEBIAN_IMAGE} AS build
COPY scripts/image-steps.sh /usr/local/sbin/image-steps.sh
RUN image-steps.sh apt build
COPY pyproject.toml README.md /src/
COPY nativewatch /src/nativewatch
COPY bpf /src/bpf
RUN image-steps.sh install /src /opt/nativewatch
RUN image-steps.sh kernel-headers /opt/nativewatch
RUN image-steps.sh strip /opt/nativewatch

# Runtime: no compiler, no pip, no sources; bcc's own libraries compile the BPF programs at start.
FROM ${DEBIAN_IMAGE}
COPY scripts/image-steps.sh /usr/local/sbin/image-steps.sh
RUN image-steps.sh apt runtime
COPY --from=build /opt/nativewatch /opt/nativewatch
RUN NW_ROOT=/ image-steps.sh finalize /opt/nativewatch
ENV PYTHONDONTWRITEBYTECODE=1
# Non-root by default; the DaemonSet runs the agent as uid 0 with a short capability list.
USER 10001:10001
ENTRYPOINT ["/usr/local/sbin/image-steps.sh", "entrypoint", "/opt/nativewatch"]
CMD ["doctor"]
