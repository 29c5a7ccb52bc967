"""Specs → Airflow DAGs: the plan, the drop-in folder loader, and static code generation."""
