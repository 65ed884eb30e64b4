"""The PII registry race on the real PostgreSQL (issue 12, finding 4).

Two store instances on one schema (two processes' worth of pools and PII-registry views):
instance R marks a name PII while instance W writes a value of that name, 1,000 times.
The interleavings are forced in turn (events raised by the stores, no timing): W's write
starts freely, or after R's marker committed, after R listed the tenant's profiles, after
R read the profile to re-seal it; or R starts after W's value was written but before W's
fence. Afterwards every stored value of the name is read straight from the table: none may
be plaintext. Before the fence (crypto.py, *Registry race*) 214 of the 1,000 left the value
plaintext (mostly the "after R listed / read" kinds) until W's view expired.
"""

from __future__ import annotations

import asyncio
import base64
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from ccvault.crypto import ENVELOPE_PREFIX, PII_REGISTRY_AGENT_ID, EncryptedProfileStore, Keyring
from ccvault.models import Channel, CustomerProfile, ProfileField, ProfileFieldDefinition
from ccvault.store import ForwardingProfileStore

RACES = 1_000
CONCURRENT = 25  # races run side by side (each its own tenant)
AGENT = uuid.UUID("5ea1ed00-0000-4000-8000-00000000a9e1")
KEY = "k1:" + base64.b64encode(bytes(range(32))).decode()


class Stages(ForwardingProfileStore):
    """Raises a per-tenant event when a step of the registration or of a write is done."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.events: dict[tuple[uuid.UUID, str], asyncio.Event] = {}

    def event(self, tenant_id: uuid.UUID, stage: str) -> asyncio.Event:
        return self.events.setdefault((tenant_id, stage), asyncio.Event())

    async def _save_field_definition(self, definition: ProfileFieldDefinition) -> uuid.UUID:
        saved = await super()._save_field_definition(definition)
        if definition.agent_id == PII_REGISTRY_AGENT_ID:
            self.event(definition.tenant_id, "marked").set()
        return saved

    async def _list_profile_ids(self, tenant_id: uuid.UUID) -> list[uuid.UUID]:
        listed = await super()._list_profile_ids(tenant_id)
        self.event(tenant_id, "listed").set()
        return listed

    async def _export_profile(
        self, tenant_id: uuid.UUID, profile_id: uuid.UUID
    ) -> CustomerProfile | None:
        exported = await super()._export_profile(tenant_id, profile_id)
        self.event(tenant_id, "exported").set()
        return exported

    async def _update_field(
        self,
        tenant_id: uuid.UUID,
        profile_id: uuid.UUID,
        field: ProfileField,
        supersede_existing: bool,
    ) -> uuid.UUID:
        written = await super()._update_field(tenant_id, profile_id, field, supersede_existing)
        if field.name == "iban":
            self.event(tenant_id, "written").set()
        return written


async def _when(event: asyncio.Event | None, step: Awaitable[object]) -> None:
    if event is not None:
        await asyncio.wait_for(event.wait(), timeout=120)  # a deadlock guard only
    await step


async def _yields(count: int) -> None:
    """Give the event loop ``count`` turns: varies the interleaving, synchronises nothing."""
    for _ in range(count):
        await asyncio.sleep(0)


async def _after(count: int, step: Awaitable[object]) -> None:
    await _yields(count)
    await step


async def test_marking_a_name_pii_during_writes_never_leaves_plaintext(
    make_store: Callable[..., Awaitable[Any]], pg_dsn: str
) -> None:
    schema = f"t_seal_{uuid.uuid4().hex[:16]}"
    keyring = Keyring.parse(KEY)
    # an hour-long view: W never learns of the name by its view's age, only by the fence
    r_stages = Stages(await make_store(schema=schema))
    w_stages = Stages(await make_store(schema=schema, migrate=False))
    registrar = EncryptedProfileStore(r_stages, keyring, registry_ttl=3600.0)
    writer = EncryptedProfileStore(w_stages, keyring, registry_ttl=3600.0)
    rng = random.Random(20261130)
    written: dict[uuid.UUID, tuple[uuid.UUID, str]] = {}

    async def race(n: int) -> None:
        tenant = uuid.uuid5(AGENT, f"race-{n}")
        person = await writer.get_or_create(tenant, Channel.WHATSAPP, f"+4915100{n:05d}")
        # W's view of this tenant exists and does not list the name
        await writer.update_field(tenant, person.id, ProfileField(name="note", value="x"))
        value = f"plain-secret-{n:05d}"
        mark = registrar.save_field_definition(
            ProfileFieldDefinition(tenant_id=tenant, agent_id=AGENT, name="iban", is_pii=True)
        )
        write = writer.update_field(tenant, person.id, ProfileField(name="iban", value=value))
        mode = n % 5
        if mode == 0:  # free: both start together, in a random number of loop turns
            steps = [_after(rng.randrange(8), mark), _after(rng.randrange(8), write)]
        elif mode == 4:  # R marks after W's value is written, before W's fence reads
            steps = [_when(w_stages.event(tenant, "written"), mark), write]
        else:  # W writes after R marked / listed the profiles / read the profile
            stage = ("marked", "listed", "exported")[mode - 1]
            steps = [mark, _when(r_stages.event(tenant, stage), write)]
        await asyncio.gather(*steps)
        written[tenant] = (person.id, value)

    for start in range(0, RACES, CONCURRENT):
        await asyncio.gather(*(race(n) for n in range(start, min(start + CONCURRENT, RACES))))
    assert len(written) == RACES

    connection = await asyncpg.connect(pg_dsn)
    try:
        rows = await connection.fetch(
            f"SELECT tenant_id, name, value #>> '{{}}' AS text FROM \"{schema}\".profile_fields"
        )
    finally:
        await connection.close()
    by_name: dict[str, list[str]] = {}
    for row in rows:
        by_name.setdefault(row["name"], []).append(row["text"])
    # the scan sees stored data: the non-PII control value is there in plaintext
    assert by_name["note"] == ["x"] * RACES
    assert len(by_name["iban"]) == RACES
    plaintext = [text for text in by_name["iban"] if not text.startswith(ENVELOPE_PREFIX)]
    assert plaintext == [], f"{len(plaintext)} of {RACES} races left plaintext at rest"
    # and every value reads back as written
    for tenant, (profile_id, value) in sorted(written.items())[:50]:
        got = await registrar.get_field(tenant, profile_id, "iban")
        assert got is not None and got.value == value
    # (the stores are closed by the make_store fixture)
