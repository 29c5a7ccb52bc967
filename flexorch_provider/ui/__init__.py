"""flexorch inside the Airflow api-server: a FastAPI app under ``/flexorch`` (see :mod:`.api`),
registered by the Airflow plugin in :mod:`.plugin`."""
