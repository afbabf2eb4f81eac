# Airflow's official image plus the client, for every container that runs Airflow next to an
# agent (workers, scheduler, API server, DAG processor). Airflow's version stays pinned, as the
# official image's docs ask of any added package. From PyPI:
#   docker build -t airflow-with-agent-client:3.3.2 -f deploy/airflow.Dockerfile .
# or, from this checkout, replace the RUN line by:
#   COPY --chown=airflow:root client /tmp/client
#   RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" /tmp/client
FROM apache/airflow:3.3.2
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" airflow-secrets-agent-client
