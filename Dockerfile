# The Airflow image with flexorch-provider installed: used by docker-compose.yaml.
# Build: docker build -t flexorch-airflow .   (AIRFLOW_VERSION must match constraints/)
ARG AIRFLOW_VERSION=3.3.2
FROM apache/airflow:${AIRFLOW_VERSION}-python3.11

USER root
# the ssh target uses paramiko (no ssh binary needed); openssh-client is for debugging from a shell
RUN apt-get update \
    && apt-get install -y --no-install-recommends openssh-client \
    && rm -rf /var/lib/apt/lists/*
USER airflow

COPY --chown=airflow:root pyproject.toml README.md /opt/flexorch/
COPY --chown=airflow:root constraints /opt/flexorch/constraints
COPY --chown=airflow:root flexorch_provider /opt/flexorch/flexorch_provider
RUN pip install --no-cache-dir /opt/flexorch -c /opt/flexorch/constraints/constraints-3.11.txt
