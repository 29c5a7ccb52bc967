"""flexorch: every spec file in specs/ beside this file becomes an Airflow DAG.

Copy this file into your dags folder and put your specs in ``specs/`` next to it (or
point ``FLEXORCH_SPECS_DIR`` at a folder, absolute or relative to this file). A spec that
does not validate becomes a placeholder DAG named after it that shows the error; every
other DAG still loads. ``flexorch validate specs/`` shows the same errors before you push.
"""

from flexorch_provider.dag_factory.folder import load_folder

globals().update(load_folder(__file__))
