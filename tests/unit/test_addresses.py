"""The runtime network's addresses, handed out in turn (the provisioner's Addresses)."""

from __future__ import annotations

import pytest

from sudo_provisioner.docker_backend import Addresses


def test_runtime_addresses_come_round_in_turn(tmp_path):
    """A freed address goes to another container only after every other one was handed out;
    where the turn stands survives the provisioner (a new Addresses reads it)."""
    cursor = tmp_path / "cursor"
    book = Addresses("10.9.0.0/29", "10.9.0.1", cursor)  # .1 the host's; .2 to .6 for runtimes
    assert [book.take(set()) for _ in range(3)] == ["10.9.0.2", "10.9.0.3", "10.9.0.4"]
    # .2 was freed (its family stopped): the next one is still .5, not the lowest free.
    assert Addresses("10.9.0.0/29", "10.9.0.1", cursor).take({"10.9.0.3", "10.9.0.4"}) == "10.9.0.5"
    assert book.take({"10.9.0.3", "10.9.0.4"}) == "10.9.0.6"
    assert book.take({"10.9.0.3", "10.9.0.4"}) == "10.9.0.2"  # round the subnet: skips those in use
    with pytest.raises(RuntimeError, match="every address"):
        book.take({"10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"})
