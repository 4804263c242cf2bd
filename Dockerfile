# The fluidcache image: Ray's CPU base image plus fluidcache. The Helm chart runs
#   fluidcache serve head   (Ray head + master)       and
#   fluidcache serve worker (a Ray node that gets a cache worker)
# Both stop cleanly on SIGTERM (actors undeployed, then `ray stop`).
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cpu
FROM ${RAY_IMAGE}

USER root
# libfuse 3 for `fluidcache mount` (the chart's optional FUSE DaemonSet)
RUN apt-get update && apt-get install -y --no-install-recommends fuse3 && \
    rm -rf /var/lib/apt/lists/*
WORKDIR /opt/fluidcache
COPY pyproject.toml README.md ./
COPY fluidcache ./fluidcache
RUN pip install --no-cache-dir . && \
    mkdir -p /var/lib/fluidcache/home /var/lib/fluidcache/journal && \
    chown -R 1000:1000 /var/lib/fluidcache
USER 1000
ENV FLUIDCACHE_HOME=/var/lib/fluidcache/home
STOPSIGNAL SIGTERM
EXPOSE 6379 8265 10001 8080 19998 19999
ENTRYPOINT ["fluidcache"]
CMD ["serve", "head"]
