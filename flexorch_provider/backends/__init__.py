"""Backends: one per target, all behind the contract in :mod:`.base`."""
