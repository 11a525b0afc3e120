# An S3-compatible server for the compose test in MinIO's place (deploy/docker-compose.test.yml):
# SeaweedFS's `weed` from its PyPI wheel (the one scripts/setup.sh installs), serving S3 on 9000
# with MinIO's credentials and the fleet's bucket. Built by scripts/images.sh.
FROM debian:bookworm-slim
COPY weed /usr/local/bin/weed
COPY seaweedfs-entrypoint.sh /usr/local/bin/seaweedfs-entrypoint
EXPOSE 9000
ENTRYPOINT ["/usr/local/bin/seaweedfs-entrypoint"]
