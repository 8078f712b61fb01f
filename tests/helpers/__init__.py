"""Shared test fixtures: real system users, a real PAM service file, world-readable temp dirs.

The pytest fixtures built on them live in tests/conftest.py (`system_users`, `pam_service`,
`stock_pam_service`, `world_tmp`); the modules work as plain context managers too.
"""
