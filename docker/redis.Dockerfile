# A Redis image from Debian's redis-server, for machines that cannot pull `redis:7.4-alpine`
# (scripts/docker/base_images.py builds it on the local debootstrap base; compose takes it from
# REDIS_IMAGE). Runs as the package's `redis` user with /data as working directory, like the
# official image, so `redis-server --appendonly yes` writes its AOF to the `redis-data` volume.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/* \
 && mkdir -p /data && chown redis:redis /data
WORKDIR /data
VOLUME /data
USER redis
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
