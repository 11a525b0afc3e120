# Prometheus for the compose test (deploy/docker-compose.test.yml): Debian bookworm's package,
# unpacked by scripts/images.sh (`apt-get download prometheus`), since prom/prometheus cannot be
# pulled here. Reads the compose file's /etc/prometheus/prometheus.yml.
FROM debian:bookworm-slim
COPY prometheus /usr/local/bin/prometheus
RUN mkdir -p /prometheus && chown 65534:65534 /prometheus
USER 65534:65534
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/prometheus"]
