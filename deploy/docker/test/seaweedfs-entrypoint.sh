#!/bin/sh
# SeaweedFS in MinIO's place: one identity from MINIO_ROOT_USER / MINIO_ROOT_PASSWORD (the keys the
# workers use), the bucket from EMBEDFLEET_BUCKET (default embedfleet), S3 on port 9000, data in /data.
set -eu
: "${MINIO_ROOT_USER:?set MINIO_ROOT_USER}" "${MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD}"
mkdir -p /data /etc/seaweedfs
cat >/etc/seaweedfs/s3.json <<JSON
{"identities":[{"name":"fleet","credentials":[{"accessKey":"${MINIO_ROOT_USER}","secretKey":"${MINIO_ROOT_PASSWORD}"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
exec weed mini -dir=/data -master.telemetry=false -s3.config=/etc/seaweedfs/s3.json \
  -bucket="${EMBEDFLEET_BUCKET:-embedfleet}" -s3.port=9000 -s3.port.iceberg=0 -s3.port.lance=0 -admin.ui=false
