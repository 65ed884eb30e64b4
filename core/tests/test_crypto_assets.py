"""Asset storage paths and verification results sealed at rest (issue 12, finding 5)."""

from __future__ import annotations

import base64
from uuid import UUID

import pytest

from ccvault import errors
from ccvault.crypto import ENVELOPE_PREFIX, METADATA_KEY, EncryptedProfileStore, Keyring, key_id_of
from ccvault.models import Channel, ProfileAsset
from ccvault_inmemory import InMemoryProfileStore

TENANT = UUID("a55e7000-0000-4000-8000-000000000001")
K1 = "k1:" + base64.b64encode(bytes(range(32))).decode()
K2 = "k2:" + base64.b64encode(bytes(range(32, 64))).decode()
PATH = "s3://vault/tenant/ana-passport-scan.png"
RESULT = {"document": "passport", "holder": "Ana Example", "valid": True}


def _asset(name: str = "passport_scan", path: str = PATH) -> ProfileAsset:
    return ProfileAsset(
        name=name,
        asset_type="id_document",
        storage_provider="s3",
        storage_path=path,
        verification_result=RESULT,
    )


async def test_paths_and_results_are_sealed_and_read_back() -> None:
    inner = InMemoryProfileStore()
    store = EncryptedProfileStore(inner, Keyring.parse(K1))
    pid = (await store.get_or_create(TENANT, Channel.WEB, "asset-owner")).id
    asset_id = await store.add_asset(TENANT, pid, _asset())
    raw = await inner.get_asset(TENANT, pid, asset_id)
    assert raw is not None
    assert raw.storage_path.startswith(ENVELOPE_PREFIX) and "ana" not in raw.storage_path
    assert raw.verification_result is not None
    assert set(raw.verification_result) == {METADATA_KEY}
    assert "Ana" not in str(raw.verification_result)
    for got in (
        await store.get_asset(TENANT, pid, asset_id),
        await store.get_asset_by_name(TENANT, pid, "passport_scan"),
    ):
        assert got is not None
        assert (got.storage_path, got.verification_result) == (PATH, RESULT)
    profile = await store.get_by_id(TENANT, pid)
    assert profile is not None and [a.storage_path for a in profile.assets] == [PATH]
    exported = await store.export_profile(TENANT, pid)
    assert exported["profile"]["assets"][0]["storage_path"] == PATH


async def test_an_envelope_moved_to_another_asset_is_refused() -> None:
    inner = InMemoryProfileStore()
    store = EncryptedProfileStore(inner, Keyring.parse(K1))
    pid = (await store.get_or_create(TENANT, Channel.WEB, "asset-mover")).id
    first = await store.add_asset(TENANT, pid, _asset("first"))
    second = await store.add_asset(TENANT, pid, _asset("second", "s3://other"))
    raw_first = await inner.get_asset(TENANT, pid, first)
    raw_second = await inner.get_asset(TENANT, pid, second)
    assert raw_first is not None and raw_second is not None
    # the first asset's sealed path written over the second's (what SQL access could do)
    profile = await inner._export_profile(TENANT, pid)
    assert profile is not None
    moved = raw_second.model_copy(update={"storage_path": raw_first.storage_path})
    await inner._save(profile.model_copy(update={"assets": [moved], "field_history": {}}))
    with pytest.raises(errors.EncryptionError, match="does not decrypt"):
        await store.get_asset(TENANT, pid, second)


async def test_bad_paths_are_refused_before_anything_is_written() -> None:
    inner = InMemoryProfileStore()
    store = EncryptedProfileStore(inner, Keyring.parse(K1))
    pid = (await store.get_or_create(TENANT, Channel.WEB, "asset-refused")).id
    with pytest.raises(errors.ValidationError, match="reserved"):
        await store.add_asset(TENANT, pid, _asset(path=ENVELOPE_PREFIX + "x"))
    long_path = "s3://" + "p" * 1800
    with pytest.raises(errors.ValidationError, match="too long to be sealed") as caught:
        await store.add_asset(TENANT, pid, _asset(path=long_path))
    assert long_path not in str(caught.value)
    profile = await inner.get_by_id(TENANT, pid)
    assert profile is not None and profile.assets == []


async def test_rotate_keys_reseals_active_assets_and_plaintext_ones() -> None:
    inner = InMemoryProfileStore()
    old = EncryptedProfileStore(inner, Keyring.parse(K1))
    pid = (await old.get_or_create(TENANT, Channel.WEB, "asset-rotated")).id
    sealed_id = await old.add_asset(TENANT, pid, _asset("sealed"))
    legacy_id = await inner.add_asset(TENANT, pid, _asset("legacy", "s3://legacy"))
    new = EncryptedProfileStore(inner, Keyring.parse(f"{K1},{K2}"))
    (report,) = await new.rotate_keys([TENANT])
    assert report.failures == []
    for asset_id, path in ((sealed_id, PATH), (legacy_id, "s3://legacy")):
        raw = await inner.get_asset(TENANT, pid, asset_id)
        assert raw is not None and key_id_of(raw.storage_path) == "k2"
        got = await EncryptedProfileStore(inner, Keyring.parse(K2)).get_asset(TENANT, pid, asset_id)
        assert got is not None and (got.storage_path, got.verification_result) == (path, RESULT)
