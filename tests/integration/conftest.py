"""Fixtures: one real control plane (provisioner + gateway + LLM stand-in) for the session.

They live in tests/control_plane.py, shared with tests/reliability; test modules import the
helpers from `control_plane` (every suite's conftest is a module named `conftest`, so which one
`from conftest import` finds depends on what else runs)."""

from control_plane import (  # noqa: F401 (the fixtures)
    api,
    fresh_settings,
    http,
    provisioner,
    stack,
)
