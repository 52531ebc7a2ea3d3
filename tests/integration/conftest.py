"""Fixtures: one real control plane (provisioner + gateway + LLM stand-in) for the session.

They live in tests/control_plane.py, shared with tests/reliability; test modules here import
the helpers from `conftest` or from `control_plane`."""

from control_plane import (  # noqa: F401 (fixtures, and helpers the test modules import from here)
    Family,
    api,
    chat,
    fresh_settings,
    http,
    provisioner,
    sign_up,
    stack,
)
