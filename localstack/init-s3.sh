#!/bin/bash
# Run by LocalStack inside its container once it is ready (docker-compose.yml mounts it into
# /etc/localstack/init/ready.d): creates the bucket lakesink writes to. awslocal comes with the image.
set -euo pipefail
awslocal s3 mb "s3://${LAKESINK_BUCKET:-lake}"
