"""The ``flexorch`` command line."""
