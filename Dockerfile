# connmix-py as a container: `docker build -t connmix-py .`, then
#   docker run -p 6789:6789 -p 6790:6790 -v "$PWD/conf:/etc/connmix:ro" connmix-py
# where conf/ holds connmix.yaml and its lua/ folder (README "Deployment").
FROM python:3.11-slim

# Only what `pip install .` needs, so a change to tests or docs keeps the layer cached.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY connmix_py ./connmix_py
RUN pip install --no-cache-dir . && rm -rf /src

# A user with no login and no home to write to; the state folder (relative
# log files) is the only place it owns.
RUN useradd --system --user-group --no-create-home --shell /usr/sbin/nologin connmix \
    && mkdir -p /var/lib/connmix \
    && chown connmix:connmix /var/lib/connmix

# The shipped configuration and scripts: a new named volume starts with them;
# mount your own folder (connmix.yaml beside lua/) over /etc/connmix.
COPY connmix.yaml /etc/connmix/connmix.yaml
COPY lua /etc/connmix/lua
# logging.filename is relative to the yaml's folder, which may be mounted
# read-only: the shipped yaml logs into the state volume instead.
RUN grep -q 'filename: logs/connmix.log' /etc/connmix/connmix.yaml \
    && sed -i 's#filename: logs/connmix.log#filename: /var/lib/connmix/logs/connmix.log#' /etc/connmix/connmix.yaml
VOLUME ["/etc/connmix", "/var/lib/connmix"]

USER connmix
WORKDIR /var/lib/connmix
# apiServer and the websocket server of the shipped connmix.yaml.
EXPOSE 6789 6790
# docker stop sends SIGTERM; keep its timeout (docker stop -t, default 10 s)
# above engine.shutdownGrace (default 5 s).
STOPSIGNAL SIGTERM
# The image has no curl: Python asks /healthz. CONNMIX_API_PORT follows apiServer.port.
ENV CONNMIX_API_PORT=6789
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['CONNMIX_API_PORT'], timeout=4)"]
CMD ["connmix", "single", "-f", "/etc/connmix/connmix.yaml"]
