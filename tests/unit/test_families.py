from __future__ import annotations

import uuid

import pytest

from sudo_core.families import (
    BadFamilyId,
    api_key_for,
    family_of_llm_key,
    llm_key_for,
    parse_family_id,
    runtime_name,
    volume_name,
)

SECRET = b"s" * 32
FAMILY = uuid.UUID("12345678-1234-5678-1234-567812345678")


def test_ids_and_names():
    assert parse_family_id(FAMILY.hex) == FAMILY
    assert runtime_name(FAMILY) == "hermes-user-12345678123456781234567812345678"
    assert volume_name(FAMILY) == runtime_name(FAMILY) + "-data"
    with pytest.raises(BadFamilyId, match="'usr_1'"):
        parse_family_id("usr_1")


def test_api_keys_are_per_family_and_per_secret():
    other = uuid.uuid4()
    assert api_key_for(SECRET, FAMILY) == api_key_for(SECRET, FAMILY)
    assert api_key_for(SECRET, FAMILY) != api_key_for(SECRET, other)
    assert api_key_for(SECRET, FAMILY) != api_key_for(b"t" * 32, FAMILY)
    assert len(api_key_for(SECRET, FAMILY)) >= 16
    assert api_key_for(SECRET, FAMILY) not in llm_key_for(SECRET, FAMILY)


def test_gateway_keys_name_their_family_and_resist_forgery():
    key = llm_key_for(SECRET, FAMILY)
    assert family_of_llm_key(SECRET, key) == FAMILY
    other = uuid.uuid4()
    forged = key.replace(FAMILY.hex, other.hex)
    tampered = key[:-1] + ("0" if key[-1] != "0" else "1")
    for bad in (forged, tampered, llm_key_for(b"t" * 32, FAMILY), "", "sk-sudo-", key + "0"):
        assert family_of_llm_key(SECRET, bad) is None, bad
