"""PII encryption at rest: :class:`EncryptedProfileStore`, a ``ProfileStore`` wrapper.

With ``[profile] auto_encrypt_pii = true``, ``ccvault.open_store`` puts this wrapper on top of
the stack (above the cache), so the value and ``source_metadata`` of every PII field reach the
cache and the database only as AES-GCM ciphertext. The ``source_metadata`` of every *other*
field is sealed too (when not empty): it holds lineage such as the quote a value was extracted
from, which may name a customer whatever the field is (``newsletter`` extracted from "sign me
up at bob@example.com"). Values of non-PII fields stay plaintext.

Keys
    ``pii_encryption_key_id`` (by default ``${PROFILE_PII_ENCRYPTION_KEY}``) holds a keyring:
    a comma-separated list of ``KID:KEY`` entries, where ``KID`` is a key id
    (``[A-Za-z0-9_.-]``, at most 32 characters) and ``KEY`` is a 256-bit key in base64
    (standard or URL-safe alphabet)::

        PROFILE_PII_ENCRYPTION_KEY="2025a:3q2+7w...=,2026b:q83v...="

    The **last** entry is the current key: new values are encrypted under it; older entries
    only decrypt. To rotate, append a new entry, restart, and run ``ccvault rotate-keys``,
    which re-encrypts every PII value (every version, every profile) under the current key;
    afterwards the old entries can be removed. A single bare key without ``KID:`` gets the id
    ``default``. ``ccvault keygen KID`` prints a fresh entry.

Ciphertext
    A value becomes the string ``ccvault:pii:v2:KID:B64`` (B64 = URL-safe base64 of the
    12-byte nonce followed by the AES-GCM ciphertext and tag); ``source_metadata`` becomes
    ``{"ccvault:pii": "ccvault:pii:v2:KID:B64"}``. The associated data binds each ciphertext
    to the tenant, the field version's id, the field name, the part (value or metadata) and
    the envelope version; the plaintext starts with the 16 bytes of the id of the profile
    the version was sealed for (authenticated with it). So:

    * a ciphertext copied to another row, field, part or tenant no longer authenticates:
      :class:`~ccvault.errors.EncryptionError`;
    * a whole row (ciphertext with its own id) moved to another profile authenticates but
      names the wrong profile: every read that knows the profile (profile reads,
      ``get_field``, ``get_field_history``, export, rotation) raises :class:`RowMovedError`
      unless the merge log records a merge that moved this version between the two
      profiles. ``merge_profiles`` moves rows inside the provider's transaction, which the
      wrapper cannot join: right after it returns the wrapper re-seals the moved rows for
      the target (``_rebind``; ``unmerge`` likewise for the source), and until then (or if
      the process died in between) the merge log vouches for them; ``rotate-keys`` re-binds
      what is left. What it does not cover: someone who can also write merge-log rows can
      vouch for a move; lineage reads (``get_derived_items``, ``get_derivation_chain``) do
      not know the profile and check only the row binding.

    ``v1`` envelopes (written before profile binding: no profile id, associated data
    without the version) stay readable and ``rotate-keys`` rewrites them as ``v2``.
    :meth:`EncryptedProfileStore.encrypt_field` without ``profile_id`` still writes ``v1``.

Channel identities
    With encryption on, the store never holds a channel user id: it holds the token
    ``cid1:KID:B64``, the AES-SIV (RFC 5297, ``cryptography``'s ``AESSIV``) encryption of
    the id, padded (ISO/IEC 7816-4) to a multiple of 16 bytes, under a 512-bit key derived
    with HKDF-SHA256 from keyring entry ``KID``, with the tenant and the channel as
    associated data. AES-SIV is deterministic: the same id of the same channel and tenant
    under the same key always gives the same token, so the provider indexes, looks up and
    enforces uniqueness on tokens exactly as on ids (a keyed blind index), and the wrapper
    opens the token back into the id on every read. It leaks equality of one id within one
    tenant, channel and key (which lookups need) and the length in 16-byte steps; an id
    whose token would pass the 255 characters of a channel user id (about 140-160 bytes,
    by key-id length) is refused with ValidationError while encryption is on. Every hook
    taking or returning a channel user id transforms it the same way: lookups, get_or_create,
    link_channel, save, export, the merge log, unmerge and the subject lookup of erasure.
    A lookup tries the token under the current key, then under each older key (a rotation
    in progress), then the plaintext id (stored before encryption was turned on; turn off
    with ``legacy_identities=False``); ``rotate-keys`` re-tokenises the identities of live
    profiles (through a save: a provider keeps the replaced row as a *released* identity
    until the profile is purged or its subject erased). The eviction rule's tie-break
    (smaller channel user id) is kept in plaintext order (``_evict_tie_by_plaintext``).
    Tokens are not bound to a profile: identities move with merges and are looked up
    without one.

Assets
    ``storage_path`` and a non-empty ``verification_result`` of every asset are sealed like
    field values (``ccvault:pii:v1:`` envelope; the result as ``{"ccvault:pii": ...}``),
    bound to tenant, asset id and part; ``rotate-keys`` re-seals the ACTIVE ones (a save
    updates only those in place).

Consent IP addresses
    With encryption on, a consent's ``ip_address`` is stored as ``ip_address_sealed`` (a
    ``ccvault:pii:v1:`` envelope of the address text; ``ip_address`` itself stored empty),
    the associated data binding it to the tenant, the profile, the consent type and the
    part ``consent.ip``: an envelope copied to another profile's consent, or to another
    consent type, does not open (:class:`~ccvault.errors.EncryptionError`). Every write
    carrying consents seals them (save, get_or_create); every read returning them opens
    them (profile reads, export, the merge log's moved consents). A merge moves the
    source's consent rows as they are: right after it the wrapper re-seals them for the
    target (``_rebind``, with the field versions; unmerge likewise for the source), and
    until then a read accepts an envelope sealed for a profile a merge of the merge log
    names together with this one. A caller-supplied ``ip_address_sealed`` is refused
    (ValidationError). ``rotate-keys`` re-seals consent IPs under an older key and seals
    the plaintext ones stored before encryption was on.

Which fields are PII
    A field is PII when any definition of the tenant marks its name ``is_pii`` or
    ``encryption_required`` (DESIGN.md §5). Definitions are agent-scoped and no store method
    lists a whole tenant's, so the wrapper keeps a per-tenant registry *in the store itself*:
    saving such a definition through the wrapper also saves a disabled marker definition of
    the same name under the reserved agent :data:`PII_REGISTRY_AGENT_ID`, before the real
    definition is written. Writes read the registry through a per-tenant view kept in
    process memory (see *Registry view* below), so several processes agree within
    ``registry_ttl`` seconds. The registry is sticky: un-marking or deleting a definition
    never makes a name plaintext again (another agent may still mark it, and failing safe
    is the point); saving or deleting a definition of the reserved agent through this
    wrapper raises :class:`~ccvault.errors.ValidationError`. When a name becomes PII, the
    values of that name already stored in plaintext are re-sealed at once (bounded by
    ``reseal_limit`` profiles; beyond it a warning asks for ``ccvault rotate-keys``, see
    :meth:`EncryptedProfileStore.register_pii_names`). Reads decrypt whatever is
    ciphertext, whatever the registry says.

Registry view
    Each process keeps, per tenant, the set of PII names it last read from the registry and
    when. A write decides what to seal with it while it is younger than ``registry_ttl``
    (default 2 s), else reads the registry again (through the Redis cache when stacked). A
    definition saved or deleted through this wrapper drops the tenant's view at once, and
    ``register_pii_names`` adds the new names to the view *before* it writes the markers
    (sealing more never hurts), so within one process a name is sealed from the moment it
    is being registered. The view only saves work; correctness comes from the fence below.

Registry race (why no value of a PII name is left plaintext at rest)
    Two parties touch a name ``N`` concurrently, possibly in different processes: a writer
    W that writes a value of ``N`` and a registrar R that marks ``N`` PII. The protocol is
    the classic "write yours, then read theirs" (no lock, no clock):

    * R writes the marker of ``N`` (committed), *then* scans the tenant's profiles and
      re-seals every stored plaintext value of ``N`` (:meth:`register_pii_names`).
    * W, when its write left any value plaintext (its view did not list the name), reads
      the registry afresh *after* the write completed, and if a name it wrote plaintext is
      listed by now, re-seals that profile before the write returns (``_fence``).

    If W's fence read sees the marker, W re-seals. If it does not, that read began before
    R's marker committed, so W's value (committed before the fence read began) was
    committed before R's marker and therefore before R's scan began: R's scan sees it and
    re-seals it. Either way nothing stays plaintext once both have returned. Conditions:
    reads see every write committed before they began (PostgreSQL and SQLite transactions;
    the Redis cache's leases and epochs guarantee no stale read, ``cache.py``), and R's
    scan covers the tenant (at most ``reseal_limit`` profiles; above it R warns and
    ``ccvault rotate-keys --tenant`` closes the gap). A write whose outcome is unknown (it
    raised) or whose fence read failed is remembered and decided by the next registry read
    of this process, at the latest after ``registry_ttl`` (scheduled re-check) or at
    :meth:`EncryptedProfileStore.aclose`. Cost: one registry read after each write that
    leaves a value plaintext (a Redis GET when the cache is on); writes of PII names and
    ``encrypt_all`` need none. ``providers/postgres/tests/test_seal_registry_race.py`` runs
    1,000 such races between two store instances on PostgreSQL and scans the table.

Cost
    The AES-GCM objects are built once per key (:class:`Keyring`); opening an envelope is a
    prefix check, a dictionary lookup of the key id, a strict base64 decode and one AES-GCM
    call (any failure falls back to the full parse, for the precise error); the associated
    data of a field reuses per-tenant and per-name byte strings; decrypted fields are copied
    without re-validation (the plaintext is JSON this wrapper sealed and authenticated).

    Opened-envelope cache: each process keeps the opened value and metadata of the field
    versions it decrypted recently (``opened_cache_size`` versions, default 20,000, oldest
    dropped first; all dropped every ``opened_cache_ttl`` seconds, default 300; 0 turns it
    off), keyed by the envelope text. A hit requires the same tenant, field version id,
    name, part and both envelopes: exactly what the associated data binds, so a copied,
    moved or tampered envelope misses and then fails as without the cache; a hit for
    another profile than the one the envelope is bound to is checked against the merge log
    as without the cache. No caller can change what another one gets: immutable values are
    shared, a list or object of immutable values is kept as a copy of its own and served
    as a shallow copy, anything nested is kept as JSON and parsed for each caller. Profile
    reads (``get_by_id``, ``get_by_customer_id``, ``get_by_channel_identity``, export)
    and ``get_field``/``get_field_history`` open the models the inner store just built
    for this caller in place instead of copying them (every provider and the cache build
    new models per read; an inner store must not hand out models it keeps); every other
    read opens a copy of its own the same way, so one function checks every cache hit. A
    field version is changed only after all its checks passed. This process holds the
    keys, so plaintext in its memory adds no exposure beyond the moment of a read; every
    erasure through this wrapper (``purge_profile``, subject erasure, ``delete_item``)
    drops the whole cache, and another process's copies age out within
    ``opened_cache_ttl`` and are unreachable (the store never returns an erased envelope
    again). A read of a profile read before (the common case in a conversation) then
    costs a dictionary lookup per field, not AES-GCM.
    Opened channel identities are kept the same way, and so are the tokens a lookup by
    channel identity computes (per keyring and ``legacy_identities``; AES-SIV is
    deterministic, so a kept token is the one sealing would give).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid5

import orjson
from pydantic import BaseModel

from ccvault import errors
from ccvault.arguments import check_field_name, check_uuid
from ccvault.cache_codec import trusted_replace
from ccvault.extras import requires_extra
from ccvault.models import (
    Channel,
    ChannelIdentity,
    Consent,
    CustomerProfile,
    ItemStatus,
    ItemType,
    LineageEntry,
    MergeIdentityMove,
    MergeRecord,
    ProfileAsset,
    ProfileField,
    ProfileFieldDefinition,
    UnmergeResult,
)
from ccvault.rules.identity import channel_eviction
from ccvault.rules.merge import MergeLogRequest
from ccvault.store import ForwardingProfileStore, MergeWinner, ProfileStore

with requires_extra("crypto", "Encryption at rest (ccvault.crypto)"):
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

if TYPE_CHECKING:
    from ccvault.settings import VaultSettings

__all__ = [
    "ENVELOPE_PREFIX",
    "IDENTITY_PREFIX",
    "METADATA_KEY",
    "PII_REGISTRY_AGENT_ID",
    "EncryptedProfileStore",
    "Keyring",
    "RotationFailure",
    "RotationProgress",
    "RotationReport",
    "RowMovedError",
    "generate_key_entry",
]

#: Every envelope starts with this (``v1``: field version binding; ``v2``: profile too).
ENVELOPE_PREFIX = "ccvault:pii:"
_V1_PREFIX = "ccvault:pii:v1:"
_V2_PREFIX = "ccvault:pii:v2:"
_V2_AAD = b"\0v2"  # appended to a part's associated data in a v2 envelope
#: Stored channel user ids start with this when sealed (``cid1:KID:B64``).
IDENTITY_PREFIX = "cid1:"
_IDENTITY_INFO = b"ccvault channel identity AES-SIV v1"
_IDENTITY_MAX = 255  # ChannelIdentity.channel_user_id is ShortText
_ASSET_PATH_MAX = 2048  # ProfileAsset.storage_path
_CONSENT_IP_PART = b"\0consent.ip"
METADATA_KEY = "ccvault:pii"
#: The reserved agent under which the per-tenant PII-name registry is kept as definitions.
PII_REGISTRY_AGENT_ID = uuid5(UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8"), "urn:ccvault:pii")

logger = logging.getLogger(__name__)

_KID = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_ENVELOPE = re.compile(r"^ccvault:pii:v[12]:([A-Za-z0-9_.-]{1,32}):([A-Za-z0-9_=-]+)$")
_NONCE_BYTES = 12
_PREFIX_LENGTH = len("ccvault:pii:v1:")
_PADDING = ("", "===", "==", "=")  # by len(body) % 4 (1 is invalid base64 anyway)
_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_a2b = binascii.a2b_base64
_loads = orjson.loads
_SETTING = "profile.pii_encryption_key_id"
_IMMUTABLE_JSON = (str, int, float, bool)


#: an entry of the opened-envelope cache (see ``EncryptedProfileStore._open_in_place``)
_Opened = tuple[
    bytes,
    UUID,
    str,
    bool,
    "str | None",
    Any,
    "Callable[[Any], Any] | None",
    Any,
    "Callable[[Any], Any]",
    "int | None",
]


class RowMovedError(errors.EncryptionError):
    """A sealed field version read under a profile it was not sealed for, and no merge
    moved it there (see the module docstring, *Ciphertext*)."""


class _ConsentMovedError(RowMovedError):
    """A sealed consent IP that does not open under the profile it was read from: moved
    by a merge not yet re-sealed (the merge log names the other profile) or tampered."""


def _consent_aad(tenant_id: UUID, profile_id: UUID, consent_type: str) -> bytes:
    """Associated data of a sealed consent IP: tenant, profile, consent type, part."""
    kind = consent_type.encode()
    return (
        _tenant_head(tenant_id)
        + profile_id.bytes
        + len(kind).to_bytes(2, "big")
        + kind
        + _CONSENT_IP_PART
    )


def _b64decode(text: str) -> bytes:
    text = text.strip()
    padded = text + "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64") from None


def generate_key_entry(kid: str) -> str:
    """A fresh keyring entry ``KID:BASE64`` holding a random 256-bit key."""
    if not _KID.match(kid):
        raise errors.ValidationError(f"key id must match {_KID.pattern}, got {kid!r}")
    return f"{kid}:{base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()}"


@dataclass(frozen=True)
class Keyring:
    """The configured AES-256-GCM keys by id; ``current`` encrypts, every key decrypts."""

    keys: dict[str, AESGCM]
    current: str
    #: per key id, the AES-SIV key (512 bits, HKDF-SHA256 of the AES key) that seals
    #: channel user ids deterministically (see *Channel identities*)
    identity_keys: dict[str, AESSIV] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> Keyring:
        """Parse ``KID:KEY[,KID:KEY...]`` (last = current). Errors never echo key material."""
        entries = [entry.strip() for entry in spec.split(",") if entry.strip()]
        if not entries:
            raise errors.ConfigurationError(
                f"{_SETTING}: auto_encrypt_pii is on but no encryption key is configured; set "
                "PROFILE_PII_ENCRYPTION_KEY to 'KID:BASE64KEY' (ccvault keygen KID prints one) "
                "or turn profile.auto_encrypt_pii off"
            )
        keys: dict[str, AESGCM] = {}
        identity_keys: dict[str, AESSIV] = {}
        current = ""
        for position, entry in enumerate(entries, start=1):
            kid, sep, material = entry.rpartition(":")
            if not sep:
                kid, material = "default", entry
            if not _KID.match(kid):
                raise errors.ConfigurationError(
                    f"{_SETTING}: entry {position} has an invalid key id (must match "
                    f"{_KID.pattern})"
                )
            try:
                raw = _b64decode(material)
            except ValueError:
                raise errors.ConfigurationError(
                    f"{_SETTING}: key {kid!r} is not valid base64"
                ) from None
            if len(raw) != 32:
                raise errors.ConfigurationError(
                    f"{_SETTING}: key {kid!r} must be 32 bytes (AES-256), is {len(raw)}"
                )
            if kid in keys:
                raise errors.ConfigurationError(f"{_SETTING}: key id {kid!r} is listed twice")
            keys[kid] = AESGCM(raw)
            identity_keys[kid] = AESSIV(
                HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=_IDENTITY_INFO).derive(
                    raw
                )
            )
            current = kid
        return cls(keys=keys, current=current, identity_keys=identity_keys)

    def seal_identity(self, user_id: str, aad: bytes, kid: str | None = None) -> str:
        """The stored form ``cid1:KID:B64`` of a channel user id under key ``kid`` (the
        current one by default): AES-SIV (RFC 5297, deterministic) of the id padded to a
        multiple of 16 bytes, so equal ids give equal tokens (the store indexes and looks
        them up) and the length shows only in steps of 16 bytes. ValidationError when the
        token would not fit the 255 characters of a channel user id (the id is not named)."""
        kid = self.current if kid is None else kid
        data = user_id.encode() + b"\x80"
        data += b"\0" * (-len(data) % 16)
        sealed = self.identity_keys[kid].encrypt(data, [aad])
        token = f"{IDENTITY_PREFIX}{kid}:{base64.urlsafe_b64encode(sealed).decode().rstrip('=')}"
        if len(token) > _IDENTITY_MAX:
            raise errors.ValidationError(
                f"channel_user_id of {len(user_id.encode())} bytes is too long to be sealed "
                f"under key id {kid!r} (encryption is on): its token would exceed "
                f"{_IDENTITY_MAX} characters"
            )
        return token

    def open_identity(self, token: str, aad: bytes) -> str:
        """The channel user id of a token of :meth:`seal_identity`; EncryptionError when
        malformed, of an unknown key, or not authentic for ``aad``."""
        kid, sep, body = token[len(IDENTITY_PREFIX) :].partition(":")
        key = self.identity_keys.get(kid)
        if not sep or key is None:
            raise errors.EncryptionError(
                f"sealed channel identity under key id {_shown_kid(kid)}, which is not configured "
                f"in {_SETTING} (configured: {sorted(self.identity_keys)})"
            )
        try:
            data = key.decrypt(_b64decode(body), [aad])
            opened = data.rstrip(b"\0")
            if not opened.endswith(b"\x80"):
                raise ValueError("bad padding")
            return opened[:-1].decode()
        except (ValueError, InvalidTag, UnicodeDecodeError):
            raise errors.EncryptionError(
                f"the key for key id {kid!r} does not open this sealed channel identity: wrong "
                "key or tampered data (copied from another tenant or channel?)"
            ) from None

    def encrypt(self, plaintext: bytes, aad: bytes, prefix: str = _V1_PREFIX) -> str:
        """An envelope string under the current key (``prefix``: its version)."""
        nonce = os.urandom(_NONCE_BYTES)
        if prefix == _V2_PREFIX:  # the version is authenticated too
            aad += _V2_AAD
        sealed = self.keys[self.current].encrypt(nonce, plaintext, aad)
        body = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{prefix}{self.current}:{body}"

    def decrypt(self, envelope: str, aad: bytes) -> bytes:
        """The plaintext of an envelope; EncryptionError if unknown key or not authentic."""
        # the fast path: a well-formed envelope of a configured key that authenticates
        try:
            kid, _, body = envelope[_PREFIX_LENGTH:].partition(":")
            key = self.keys.get(kid)
            if key is not None and (
                envelope.startswith(_V2_PREFIX) or envelope.startswith(_V1_PREFIX)
            ):
                raw = _a2b(
                    (body + _PADDING[len(body) & 3]).encode().translate(_URLSAFE_TO_STANDARD),
                    strict_mode=True,
                )
                if envelope[13] == "2":
                    aad += _V2_AAD
                return key.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], aad)
        except (binascii.Error, ValueError, InvalidTag, TypeError, AttributeError):
            pass
        return self._decrypt_checked(envelope, aad)

    def _decrypt_checked(self, envelope: str, aad: bytes) -> bytes:
        """:meth:`decrypt` parsing everything, for the precise error when it fails."""
        match = _ENVELOPE.match(envelope)
        if match is None:
            raise errors.EncryptionError("malformed PII ciphertext")
        kid, body = match.groups()
        key = self.keys.get(kid)
        if key is None:
            raise errors.EncryptionError(
                f"PII ciphertext was written under key id {kid!r}, which is not configured in "
                f"{_SETTING} (configured: {sorted(self.keys)})"
            )
        if envelope.startswith(_V2_PREFIX):
            aad += _V2_AAD
        try:
            raw = _b64decode(body)
            return key.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], aad)
        except (ValueError, InvalidTag):
            raise errors.EncryptionError(
                f"the key for key id {kid!r} does not decrypt this PII ciphertext: wrong key "
                "(another key configured under the same id) or tampered data (it does not "
                "authenticate; copied from another row?)"
            ) from None


def key_id_of(envelope: object) -> str | None:
    """The key id recorded in an envelope, or None when ``envelope`` is not one."""
    if isinstance(envelope, str):
        match = _ENVELOPE.match(envelope)
        if match:
            return match.group(1)
    return None


def _is_v1(value: object) -> bool:
    return isinstance(value, str) and value.startswith(_V1_PREFIX)


def _is_envelope(value: object) -> bool:
    return isinstance(value, str) and value.startswith(ENVELOPE_PREFIX)


def _metadata_envelope(metadata: dict[str, Any]) -> str | None:
    if len(metadata) == 1 and isinstance(metadata.get(METADATA_KEY), str):
        return str(metadata[METADATA_KEY])
    return None


def _aad(tenant_id: UUID, field_id: UUID, name: str, part: str) -> bytes:
    return b"ccvault-pii/v1\0" + tenant_id.bytes + field_id.bytes + f"{name}\0{part}".encode()


_AAD_NAMES: dict[str, tuple[bytes, bytes]] = {}


def _aads(tenant_head: bytes, field_id: UUID, name: str) -> tuple[bytes, bytes]:
    """(value, metadata) associated data of a field version: :func:`_aad`, with the byte
    strings of the tenant (``_tenant_head``) and of the name computed once."""
    tails = _AAD_NAMES.get(name)
    if tails is None:
        tails = (f"{name}\0value".encode(), f"{name}\0metadata".encode())
        if len(_AAD_NAMES) < 100_000:
            _AAD_NAMES[name] = tails
    head = tenant_head + field_id.bytes
    return head + tails[0], head + tails[1]


_SET_FIELDS_SET = BaseModel.__dict__["__pydantic_fields_set__"].__set__


def _own_fields_set(model: BaseModel, written: Iterable[str]) -> None:
    """After attributes of ``model`` were written in place: its fields-set names them (as
    :func:`~ccvault.cache_codec.trusted_replace` does), without changing a set that other
    models may share."""
    fields_set = model.__pydantic_fields_set__
    if not fields_set.issuperset(written):
        _SET_FIELDS_SET(model, fields_set.union(written))


def _kept(opened: Any, json: bytes) -> tuple[Any, Callable[[Any], Any] | None]:
    """How the opened-envelope cache keeps an opened JSON value, and how each hit serves
    it, so that no caller can change what another one gets: an immutable value as it is
    (None: shared), a container as :func:`_kept_container` says."""
    if opened is None or opened.__class__ in _IMMUTABLE_JSON:
        return opened, None
    return _kept_container(opened, json)


def _kept_container(opened: Any, json: bytes) -> tuple[Any, Callable[[Any], Any]]:
    """A list or object of immutable values: a copy of its own, served as a shallow copy
    (a complete one for it); anything nested: its JSON, parsed for each hit."""
    cls = opened.__class__
    if cls is dict:
        if all(v is None or v.__class__ in _IMMUTABLE_JSON for v in opened.values()):
            return opened.copy(), dict.copy
    elif cls is list and all(v is None or v.__class__ in _IMMUTABLE_JSON for v in opened):
        return opened.copy(), list.copy
    return json, _loads


def _shown_kid(kid: str) -> str:
    """``kid`` quoted for a message if it is a key id's form; a malformed token's "key id"
    may be the stored identity itself (personal data), so it is not shown."""
    return repr(kid) if _KID.match(kid) else "(malformed)"


def _identity_kid(stored: str) -> str | None:
    """The key id of a sealed channel user id, None for a plaintext one."""
    if not stored.startswith(IDENTITY_PREFIX):
        return None
    kid = stored[len(IDENTITY_PREFIX) :].partition(":")[0]
    # a malformed token's "key id" may be the stored identity itself: never shown
    return kid if _KID.match(kid) else None


def _identity_aad(tenant_id: UUID, channel: Channel) -> bytes:
    """Associated data of a sealed channel user id: the tenant and the channel (not the
    profile: an identity moves between profiles on merge and is looked up without one)."""
    return b"ccvault-cid/v1\0" + tenant_id.bytes + channel.value.encode()


def _tenant_head(tenant_id: UUID) -> bytes:
    return b"ccvault-pii/v1\0" + tenant_id.bytes


@dataclass(frozen=True)
class RotationFailure:
    """One field version :meth:`EncryptedProfileStore.rotate_keys` could not re-seal.

    Names the row, never its content: ``key_id`` is the key id its envelope records (None
    when the stored text is not a well-formed envelope), ``reason`` the error class and
    message of :class:`~ccvault.errors.EncryptionError` (which never holds a value).
    """

    tenant_id: UUID
    profile_id: UUID
    item_id: UUID
    key_id: str | None
    reason: str


@dataclass
class RotationReport:
    """What :meth:`EncryptedProfileStore.rotate_keys` did for one tenant.

    ``failures`` lists every field version that could not be decrypted (the run went on
    without it); a report with failures means "completed with errors".
    """

    tenant_id: UUID
    profiles: int = 0
    rewritten: int = 0
    failures: list[RotationFailure] = field(default_factory=list)
    #: channel identities re-sealed under the current key (older key or plaintext before)
    identities: int = 0


@dataclass(frozen=True)
class RotationProgress:
    """Where a :meth:`EncryptedProfileStore.rotate_keys` run is, after each batch.

    ``profiles_done`` of ``profiles_total`` (every listed tenant; the total grows as each
    tenant's profiles are listed), field versions ``rewritten`` and ``failed`` so far,
    ``rate`` in profiles per second since the start and ``eta_seconds`` for the profiles
    listed so far (None before the rate is known).
    """

    tenant_id: UUID
    profiles_done: int
    profiles_total: int
    rewritten: int
    failed: int
    elapsed_seconds: float
    rate: float
    eta_seconds: float | None


_MovedAndPartners = tuple[dict[UUID, set[UUID]], tuple[UUID, ...]]


class _MergeLogOnce:
    """One profile's merge log as :meth:`EncryptedProfileStore._merge_log` gives it, read on
    first need and at most once for a whole rebind or rotation (its consents and its field
    versions may both need it)."""

    __slots__ = ("_found", "_read")

    def __init__(self, read: Callable[[], Awaitable[_MovedAndPartners]]) -> None:
        self._read = read
        self._found: _MovedAndPartners | None = None

    async def get(self) -> _MovedAndPartners:
        if self._found is None:
            self._found = await self._read()
        return self._found


class EncryptedProfileStore(ForwardingProfileStore):
    """Encrypts PII field values and metadata on the way in, decrypts on the way out.

    ``encrypt_all=True`` treats every field as PII (used to run the contract suite with
    every value encrypted). See the module docstring for formats and rules.
    """

    def __init__(
        self,
        inner: ProfileStore,
        keyring: Keyring,
        *,
        encrypt_all: bool = False,
        reseal_limit: int = 1000,
        registry_ttl: float = 2.0,
        plaintext_watch: int = 10_000,
        opened_cache_size: int = 20_000,
        opened_cache_ttl: float = 300.0,
        legacy_identities: bool = True,
    ) -> None:
        super().__init__(inner)
        self.keyring = keyring
        self.encrypt_all = encrypt_all
        #: At most this many profiles are re-sealed inline when a name becomes PII.
        self.reseal_limit = reseal_limit
        #: How long (seconds) a tenant's view of the PII registry is used before re-reading
        #: it: the longest another process's new PII name may go unseen here.
        self.registry_ttl = registry_ttl
        #: Profiles per tenant whose plaintext writes are remembered until the registry has
        #: been re-read (see the module docstring, *Registry view*).
        self.plaintext_watch = plaintext_watch
        # tenant -> (PII names, monotonic time they were read)
        self._registry: dict[UUID, tuple[frozenset[str], float]] = {}
        # tenant -> name -> profiles written with a plaintext value of that name, not yet
        # decided by a registry read begun after the write (None: too many to list)
        self._plaintext: dict[UUID, dict[str, set[UUID]] | None] = {}
        self._rechecks: dict[UUID, asyncio.Task[None]] = {}
        self._closing = False
        #: the clock the registry view's age is measured with (tests replace it)
        self.clock: Callable[[], float] = time.monotonic
        #: Opened envelopes kept in process memory (0: none), and for how long (seconds);
        #: see the module docstring, *Cost*.
        self.opened_cache_size = opened_cache_size
        self.opened_cache_ttl = opened_cache_ttl
        # first envelope of a field version -> (tenant head, field version id, name, value
        # sealed?, metadata envelope, value kept, its copier, metadata kept, its copier,
        # profile bound as int): see _open_in_place and _kept
        self._opened: dict[str, _Opened] = {}
        self._opened_since = self.clock()
        # token -> (tenant, channel, channel user id)
        self._opened_identities: dict[str, tuple[UUID, Channel, str]] = {}
        # (tenant, channel, channel user id) -> (keyring, legacy_identities, stored forms)
        self._identity_lookups: dict[
            tuple[UUID, Channel, str], tuple[Keyring, bool, tuple[str, ...]]
        ] = {}
        #: Also look channel identities up by their plaintext id (stored before encryption
        #: was turned on; ``rotate-keys`` seals them). Off: one lookup less on every miss.
        self.legacy_identities = legacy_identities
        #: channel identities re-sealed by rotation (rotate-keys reports it)
        self.identities_rotated = 0

    @classmethod
    def from_settings(cls, inner: ProfileStore, settings: VaultSettings) -> ProfileStore:
        """Wrap ``inner`` when ``auto_encrypt_pii`` is on; ConfigurationError without a key."""
        if not settings.profile.auto_encrypt_pii:
            return inner
        keyring = settings.profile.pii_encryption_key_id.get_secret_value()
        return cls(inner, Keyring.parse(keyring))

    # ---------------------------------------------------------------------------------
    # the cipher
    # ---------------------------------------------------------------------------------

    async def pii_field_names(self, tenant_id: UUID) -> frozenset[str]:
        """The tenant's PII field names, read from the registry kept in the store."""
        tenant_id = check_uuid(tenant_id, "tenant_id")
        # plaintext writes that completed before this read began: this read decides them
        written = self._plaintext.pop(tenant_id, {})
        try:
            markers = await super()._get_field_definitions(tenant_id, PII_REGISTRY_AGENT_ID, False)
        except BaseException:
            self._keep_watching(tenant_id, written)
            raise
        names = frozenset(marker.name for marker in markers)
        await self._learned(tenant_id, names, written)
        return names

    async def _pii_names(self, tenant_id: UUID) -> frozenset[str]:
        """The tenant's PII names as writes use them: the view, re-read when older than
        ``registry_ttl`` (see the module docstring, *Registry view*)."""
        view = self._registry.get(tenant_id)
        if view is not None and self.clock() - view[1] < self.registry_ttl:
            return view[0]
        return await self.pii_field_names(tenant_id)

    async def _learned(
        self, tenant_id: UUID, names: frozenset[str], written: dict[str, set[UUID]] | None
    ) -> None:
        """Keep ``names`` (just read) as the tenant's view; re-seal what this process had
        written in plaintext (``written``, completed before the read began) of a name now
        listed. A write that lands after a registration's re-seal scan began its seal
        decision before that registration, so its record predates any read that could
        miss the name: such a read starts after it landed and sees the marker."""
        previous = self._registry.get(tenant_id)
        if len(self._registry) >= 100_000 and previous is None:
            self._registry.clear()
        self._registry[tenant_id] = (
            names if previous is None else names | previous[0],
            self.clock(),
        )
        if written is None:
            logger.warning(
                "tenant %s: the PII registry changed while this process wrote many plaintext "
                "values; run `ccvault rotate-keys --tenant %s` to seal any of them",
                tenant_id,
                tenant_id,
            )
            return
        late = {profile for name in names & written.keys() for profile in written[name]}
        for profile_id in sorted(late):
            await self._reseal_profile(tenant_id, profile_id)

    async def _fence(self, tenant_id: UUID, profile_id: UUID, names: list[str]) -> None:
        """After a write that left ``names`` plaintext: read the registry afresh and, if any
        of them is PII by now, re-seal the profile before the write returns.

        This is what makes the registry race-free (module docstring, *Registry race*). A
        failed read leaves the decision to the deferred re-check (``_wrote_plaintext``):
        the write itself has happened and is not reported as failed.
        """
        try:
            registry = await self.pii_field_names(tenant_id)
        except Exception:
            logger.warning(
                "tenant %s: the PII registry could not be read after a write; re-checked in %s s",
                tenant_id,
                self.registry_ttl,
            )
            self._wrote_plaintext(tenant_id, profile_id, names)
            return
        if not registry.isdisjoint(names):
            await self._reseal_profile(tenant_id, profile_id)

    async def _reseal_profile(self, tenant_id: UUID, profile_id: UUID) -> int:
        """:meth:`rotate_profile` for the re-sealing of plaintext: a version that cannot be
        decrypted is named in a warning and left as it is, the others are still sealed."""
        rewritten, failures = await self._rotate_profile(tenant_id, profile_id, skip_failures=True)
        for failure in failures:
            logger.warning(
                "tenant %s profile %s: field version %s (key id %s) cannot be decrypted; "
                "not re-sealed: %s",
                failure.tenant_id,
                failure.profile_id,
                failure.item_id,
                failure.key_id,
                failure.reason,
            )
        return rewritten

    def _wrote_plaintext(self, tenant_id: UUID, profile_id: UUID, names: Iterable[str]) -> None:
        """Remember a completed (or possibly completed) write of plaintext ``names``, until
        a registry read that began afterwards has decided it; that read is scheduled."""
        if tenant_id not in self._plaintext:
            self._plaintext[tenant_id] = {}
        written = self._plaintext[tenant_id]
        if written is not None:
            for name in names:
                written.setdefault(name, set()).add(profile_id)
            if sum(len(p) for p in written.values()) > self.plaintext_watch:
                self._plaintext[tenant_id] = None
        self._schedule_recheck(tenant_id)

    def _keep_watching(self, tenant_id: UUID, written: dict[str, set[UUID]] | None) -> None:
        """Put back records a failed registry read could not decide."""
        current = self._plaintext.get(tenant_id, {})
        if written is None or current is None:
            self._plaintext[tenant_id] = None
        else:
            for name, profiles in written.items():
                current.setdefault(name, set()).update(profiles)
            self._plaintext[tenant_id] = current
        self._schedule_recheck(tenant_id)

    def _schedule_recheck(self, tenant_id: UUID) -> None:
        """Read the tenant's registry again in ``registry_ttl`` seconds (a timer, not a
        synchronisation): plaintext written meanwhile is decided even if no write follows."""
        if self._closing or tenant_id in self._rechecks:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - writes always run in a loop
            return
        self._rechecks[tenant_id] = loop.create_task(self._recheck(tenant_id))

    async def _recheck(self, tenant_id: UUID) -> None:
        try:
            while tenant_id in self._plaintext and not self._closing:
                await asyncio.sleep(self.registry_ttl)  # the view's age limit, see above
                try:
                    await self.pii_field_names(tenant_id)
                except Exception:  # retried after the next interval
                    logger.warning(
                        "tenant %s: reading the PII registry failed; retrying", tenant_id
                    )
        finally:
            self._rechecks.pop(tenant_id, None)

    async def aclose(self) -> None:
        """Decide what is pending (one last registry read per tenant with plaintext writes
        not yet checked), then close the inner store."""
        self._closing = True
        tasks = list(self._rechecks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            for tenant_id in list(self._plaintext):
                try:
                    await self.pii_field_names(tenant_id)
                except Exception:
                    logger.warning(
                        "tenant %s: could not re-check the PII registry at close; run "
                        "`ccvault rotate-keys --tenant %s` if a name became PII just now",
                        tenant_id,
                        tenant_id,
                    )
        finally:
            await super().aclose()

    def _forget_registry(self, tenant_id: UUID) -> None:
        self._registry.pop(tenant_id, None)

    def _refuse_envelopes(self, item: ProfileField) -> None:
        if _is_envelope(item.value) or METADATA_KEY in item.source_metadata:
            raise errors.ValidationError(
                f"field {item.name!r}: values starting with {ENVELOPE_PREFIX!r} and the "
                f"source_metadata key {METADATA_KEY!r} are reserved for encrypted data"
            )

    def encrypt_field(
        self,
        tenant_id: UUID,
        item: ProfileField,
        *,
        pii: bool = True,
        profile_id: UUID | None = None,
    ) -> ProfileField:
        """A copy of ``item`` sealed under the current key.

        ``pii=True``: value and source_metadata are sealed. ``pii=False``: only a non-empty
        source_metadata is sealed (lineage quotes of any field may hold personal data, e.g.
        the sentence an email address was extracted from for a ``newsletter`` flag); the
        value stays plaintext. With ``profile_id`` the envelopes (``v2``) are bound to that
        profile too (every write of the wrapper passes it); without, ``v1``.
        """
        return self._encrypt_field(_tenant_head(tenant_id), item, pii, profile_id)

    def _encrypt_field(
        self, head: bytes, item: ProfileField, pii: bool, profile_id: UUID | None = None
    ) -> ProfileField:
        values = item.__dict__
        metadata = values["source_metadata"]
        if not pii and not metadata:
            return item
        value_aad, metadata_aad = _aads(head, values["id"], values["name"])
        encrypt = self.keyring.encrypt
        if profile_id is None:
            bound, prefix = b"", _V1_PREFIX
        else:  # v2: the profile's id leads the plaintext, authenticated with it
            bound, prefix = profile_id.bytes, _V2_PREFIX
        update: dict[str, Any] = {
            "source_metadata": {
                METADATA_KEY: encrypt(bound + orjson.dumps(metadata), metadata_aad, prefix)
            }
        }
        if pii:
            update["value"] = encrypt(bound + orjson.dumps(values["value"]), value_aad, prefix)
        # the envelopes are strings, a valid value and metadata: no re-validation needed
        return trusted_replace(item, update)

    def decrypt_field(
        self,
        tenant_id: UUID,
        item: ProfileField,
        profile_id: UUID | None = None,
        moved: dict[UUID, set[UUID]] | None = None,
    ) -> ProfileField:
        """A copy of ``item`` with any sealed value or metadata opened.

        ``profile_id``: the profile the row is stored under; a ``v2`` envelope bound to
        another profile raises :class:`RowMovedError` unless ``moved`` (field version id ->
        profiles a merge moved it between, from the merge log) lists that profile. None:
        the binding is not checked (lineage reads, which do not know the profile).
        """
        self._expire_opened()
        return self._decrypt_field(_tenant_head(tenant_id), item, profile_id, moved)

    def _decrypt_field(
        self,
        head: bytes,
        item: ProfileField,
        profile_id: UUID | None = None,
        moved: dict[UUID, set[UUID]] | None = None,
    ) -> ProfileField:
        # a copy of the caller's own, opened where the profile reads open theirs (one
        # cache check for both); no re-validation: authenticated plaintext of valid JSON
        opened = trusted_replace(item, {})
        self._open_in_place(head, (opened,), profile_id, moved)
        return opened

    def _open_in_place(
        self,
        head: bytes,
        items: Iterable[ProfileField],
        profile_id: UUID | None,
        moved: dict[UUID, set[UUID]] | None,
    ) -> None:
        """Open the sealed value and metadata of each of ``items`` in place (models only
        this caller holds); a version is changed only once every check passed. The one
        place that serves a hit of the opened-envelope cache (module docstring, *Cost*):
        keyed by the first envelope, valid only for the same tenant, field version, name
        and both envelopes (the check the associated data makes: a copied envelope misses,
        then fails); a miss is opened by :meth:`_open_sealed`. ``profile_id``: as
        :meth:`decrypt_field`'s.

        The fields-set of a version stays as it is: a sealed part was set explicitly
        (``value`` is required, a sealed ``source_metadata`` is never the default), so it
        names both already, as the same version read from a plaintext store would."""
        cache = self._opened
        pid = None if profile_id is None else profile_id.int
        for item in items:
            values = item.__dict__
            value = values["value"]
            metadata = values["source_metadata"]
            envelope = metadata.get(METADATA_KEY) if len(metadata) == 1 else None
            if envelope.__class__ is not str:
                envelope = None
            if value.__class__ is str and value.startswith(ENVELOPE_PREFIX):
                key = value
                sealed_value = True
            elif envelope is None:
                continue  # nothing sealed
            else:
                key = envelope
                sealed_value = False
            hit = cache.get(key)
            if hit is not None:
                h_head, h_id, h_name, h_sealed, h_envelope, kept, copy, m_kept, m_copy, bound = hit
                field_id = values["id"]
                if (
                    h_head == head
                    # (a provider's UUID subclass, asyncpg's, compares its bytes in C; the
                    # standard UUID's __eq__ is Python, its int a slot)
                    and (
                        field_id.int == h_id.int if field_id.__class__ is UUID else field_id == h_id
                    )
                    and h_name == values["name"]
                    and h_sealed is sealed_value
                    and h_envelope == envelope
                ):
                    if bound is not None and bound != pid and profile_id is not None:
                        self._check_moved(field_id, UUID(int=bound), profile_id, moved)
                    if sealed_value:
                        values["value"] = kept if copy is None else copy(kept)
                    if envelope is not None:
                        values["source_metadata"] = m_copy(m_kept)
                    continue
            self._open_sealed(head, values, key, sealed_value, envelope, profile_id, moved)

    def _open_sealed(
        self,
        head: bytes,
        values: dict[str, Any],
        key: str,
        sealed_value: bool,
        envelope: str | None,
        profile_id: UUID | None,
        moved: dict[UUID, set[UUID]] | None,
    ) -> None:
        """A miss of :meth:`_open_in_place`: decrypt the field version whose attributes
        are ``values`` (its value when ``sealed_value``, its metadata ``envelope``), check
        its binding, keep it in the cache under ``key`` (its first envelope) and write the
        opened parts into ``values``."""
        value = values["value"]
        field_id = values["id"]
        name = values["name"]
        value_aad, metadata_aad = _aads(head, field_id, name)
        bound: set[bytes] = set()
        opened_value: Any = None
        plaintext = b""
        if sealed_value:
            plaintext = self._open_part(value, value_aad, bound)
            opened_value = _loads(plaintext)
        opened_metadata: dict[str, Any] = {}
        metadata_json = b""
        if envelope is not None:
            metadata_json = self._open_part(envelope, metadata_aad, bound)
            opened_metadata = _loads(metadata_json)
            if opened_metadata.__class__ is not dict:
                raise errors.EncryptionError("decrypted source_metadata is not an object")
        if len(bound) > 1:
            raise RowMovedError(
                f"field version {field_id}: its value and metadata are sealed for different "
                "profiles (tampered)"
            )
        bound_int = int.from_bytes(next(iter(bound)), "big") if bound else None
        if profile_id is not None and bound_int is not None and bound_int != profile_id.int:
            self._check_moved(field_id, UUID(int=bound_int), profile_id, moved)
        if self.opened_cache_size:
            # kept before the caller gets the opened values (and may change them)
            value_payload, value_copy = (
                _kept(opened_value, plaintext) if sealed_value else (None, None)
            )
            metadata_payload, metadata_copy = (
                _kept_container(opened_metadata, metadata_json)
                if envelope is not None
                else (None, _loads)  # (never called without metadata)
            )
            cache = self._opened
            if len(cache) >= self.opened_cache_size:
                del cache[next(iter(cache))]  # the oldest entry
            cache[key] = (
                head,
                field_id,
                name,
                sealed_value,
                envelope,
                value_payload,
                value_copy,
                metadata_payload,
                metadata_copy,
                bound_int,
            )
        if sealed_value:
            values["value"] = opened_value
        if envelope is not None:
            values["source_metadata"] = opened_metadata

    def _open_part(self, envelope: str, aad: bytes, bound: set[bytes]) -> bytes:
        """The JSON of one envelope; a v2 envelope's profile id is added to ``bound``."""
        if envelope.startswith(_V2_PREFIX):
            plaintext = self.keyring.decrypt(envelope, aad)
            if len(plaintext) < 16:
                raise errors.EncryptionError("malformed PII ciphertext")
            bound.add(plaintext[:16])
            return plaintext[16:]
        return self.keyring.decrypt(envelope, aad)

    @staticmethod
    def _check_moved(
        field_id: UUID, bound: UUID, stored_under: UUID, moved: dict[UUID, set[UUID]] | None
    ) -> None:
        """A v2 envelope sealed for ``bound`` read from a row of ``stored_under``: allowed
        only when the merge log says a merge moved this version between the two."""
        if moved is not None and {bound, stored_under} <= moved.get(field_id, set()):
            return
        raise RowMovedError(
            f"field version {field_id} of profile {stored_under} is sealed for profile "
            f"{bound} and no merge moved it there: the row was moved (tampered)"
        )

    def _expire_opened(self) -> None:
        """Drop the opened-envelope cache when it is older than ``opened_cache_ttl``."""
        now = self.clock()
        if now - self._opened_since >= self.opened_cache_ttl:
            self._opened.clear()
            self._opened_identities.clear()
            self._identity_lookups.clear()
            self._opened_since = now

    def forget_opened(self) -> None:
        """Drop every opened (decrypted) envelope this process keeps; called by every
        erasure through this wrapper (purge, subject erasure, item deletion)."""
        self._opened.clear()
        self._opened_identities.clear()
        self._identity_lookups.clear()
        self._opened_since = self.clock()

    def _open_metadata(
        self, tenant_id: UUID, item_id: UUID, name: str, metadata: dict[str, Any]
    ) -> dict[str, Any] | None:
        envelope = _metadata_envelope(metadata)
        if envelope is None:
            return None
        opened = orjson.loads(
            self._open_part(envelope, _aad(tenant_id, item_id, name, "metadata"), set())
        )
        if not isinstance(opened, dict):
            raise errors.EncryptionError("decrypted source_metadata is not an object")
        return opened

    def _decrypt_profile(
        self,
        profile: CustomerProfile,
        moved: dict[UUID, set[UUID]] | None = None,
        partners: tuple[UUID, ...] = (),
        *,
        in_place: bool = False,
    ) -> CustomerProfile:
        """``profile`` with everything sealed opened. ``in_place``: ``profile`` was just
        read from the inner store for this caller alone (every provider and the cache
        build a new model per read), so its field versions are opened where they are
        instead of copied; a field version is changed only once all its checks passed."""
        self._expire_opened()
        tenant_id = profile.tenant_id
        head = _tenant_head(tenant_id)
        pid = profile.id
        update: dict[str, Any] = {}
        if in_place:
            self._open_in_place(head, profile.fields.values(), pid, moved)
            for versions in profile.field_history.values():
                self._open_in_place(head, versions, pid, moved)
        else:
            opened = self._decrypt_field
            update["fields"] = {
                name: opened(head, item, pid, moved) for name, item in profile.fields.items()
            }
            update["field_history"] = {
                name: [opened(head, item, pid, moved) for item in versions]
                for name, versions in profile.field_history.items()
            }
        identities = profile.channel_identities
        if identities and in_place:
            for identity in identities:
                values = identity.__dict__
                stored = values["channel_user_id"]
                user_id = self._open_token(tenant_id, values["channel"], stored)
                if user_id is not stored:
                    values["channel_user_id"] = user_id
        elif identities:
            update["channel_identities"] = self._open_identities(tenant_id, identities)
        if profile.assets:
            update["assets"] = [self._open_asset(tenant_id, a) for a in profile.assets]
        if profile.asset_history:
            update["asset_history"] = [
                self._open_asset(tenant_id, a) for a in profile.asset_history
            ]
        if profile.consents:
            update["consents"] = [
                self._open_consent(tenant_id, pid, c, partners) for c in profile.consents
            ]
        if in_place:
            profile.__dict__.update(update)
            _own_fields_set(profile, update)
            return profile
        return trusted_replace(profile, update)

    # ---------------------------------------------------------------------------------
    # assets: storage path and verification result sealed
    # ---------------------------------------------------------------------------------

    def _seal_asset(self, tenant_id: UUID, asset: ProfileAsset) -> ProfileAsset:
        """``asset`` with ``storage_path`` and a non-empty ``verification_result`` sealed
        (associated data: tenant, asset id, part). Refuses the reserved forms; a path
        whose envelope would pass the 2,048 characters of a path is refused too."""
        path = asset.storage_path
        result = asset.verification_result
        if path.startswith(ENVELOPE_PREFIX) or (result is not None and METADATA_KEY in result):
            raise errors.ValidationError(
                f"asset {asset.name!r}: storage_path values starting with {ENVELOPE_PREFIX!r} "
                f"and the verification_result key {METADATA_KEY!r} are reserved for "
                "encrypted data"
            )
        head = _tenant_head(tenant_id) + asset.id.bytes
        sealed_path = self.keyring.encrypt(orjson.dumps(path), head + b"\0storage_path")
        if len(sealed_path) > _ASSET_PATH_MAX:
            raise errors.ValidationError(
                f"asset {asset.name!r}: storage_path of {len(path)} characters is too long to "
                f"be sealed (encryption is on): its envelope would exceed {_ASSET_PATH_MAX}"
            )
        update: dict[str, Any] = {"storage_path": sealed_path}
        if result is not None:
            update["verification_result"] = {
                METADATA_KEY: self.keyring.encrypt(
                    orjson.dumps(result), head + b"\0verification_result"
                )
            }
        return trusted_replace(asset, update)

    def _open_asset(self, tenant_id: UUID, asset: ProfileAsset) -> ProfileAsset:
        path = asset.storage_path
        result = asset.verification_result
        sealed_result = (
            result[METADATA_KEY]
            if result is not None and len(result) == 1 and METADATA_KEY in result
            else None
        )
        if not path.startswith(ENVELOPE_PREFIX) and sealed_result.__class__ is not str:
            return asset  # written before encryption was on (rotate-keys seals it)
        head = _tenant_head(tenant_id) + asset.id.bytes
        update: dict[str, Any] = {}
        if path.startswith(ENVELOPE_PREFIX):
            opened = _loads(self.keyring.decrypt(path, head + b"\0storage_path"))
            if opened.__class__ is not str:
                raise errors.EncryptionError("decrypted storage_path is not a string")
            update["storage_path"] = opened
        if isinstance(sealed_result, str):
            opened = _loads(self.keyring.decrypt(sealed_result, head + b"\0verification_result"))
            if opened.__class__ is not dict:
                raise errors.EncryptionError("decrypted verification_result is not an object")
            update["verification_result"] = opened
        return trusted_replace(asset, update)

    def _asset_needs_rewrite(self, asset: ProfileAsset) -> bool:
        current = self.keyring.current
        if key_id_of(asset.storage_path) != current:
            return True
        result = asset.verification_result
        return result is not None and key_id_of(_metadata_envelope(result)) != current

    # ---------------------------------------------------------------------------------
    # consents: the IP address sealed, bound to tenant, profile and consent type
    # ---------------------------------------------------------------------------------

    def _seal_consent(self, tenant_id: UUID, profile_id: UUID, consent: Consent) -> Consent:
        """``consent`` with its IP address moved into ``ip_address_sealed`` (under the
        current key, bound to ``profile_id``). Refuses a caller-supplied sealed form."""
        if consent.ip_address_sealed is not None:
            raise errors.ValidationError(
                f"consent {consent.consent_type!r}: ip_address_sealed is reserved for the "
                "encryption wrapper (give ip_address)"
            )
        if consent.ip_address is None:
            return consent
        sealed = self.keyring.encrypt(
            str(consent.ip_address).encode(),
            _consent_aad(tenant_id, profile_id, consent.consent_type),
        )
        return trusted_replace(consent, {"ip_address": None, "ip_address_sealed": sealed})

    def _open_consent(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        consent: Consent,
        partners: tuple[UUID, ...] = (),
    ) -> Consent:
        """``consent`` with its sealed IP opened. Tries ``profile_id``, then each of
        ``partners`` (profiles a merge of the merge log names with it). Raises
        :class:`_ConsentMovedError` when none opens it and no partner was given, else
        :class:`~ccvault.errors.EncryptionError`."""
        sealed = consent.ip_address_sealed
        if sealed is None:
            return consent
        for owner in (profile_id, *partners):
            try:
                opened = self.keyring.decrypt(
                    sealed, _consent_aad(tenant_id, owner, consent.consent_type)
                )
            except errors.EncryptionError:
                continue
            try:
                address = ip_address(opened.decode())
            except ValueError:
                raise errors.EncryptionError(
                    "decrypted consent ip_address is not an IP address"
                ) from None
            return trusted_replace(consent, {"ip_address": address, "ip_address_sealed": None})
        if not partners:
            raise _ConsentMovedError(
                f"tenant {tenant_id} profile {profile_id}: the sealed ip_address of consent "
                f"{consent.consent_type!r} does not open under this profile (key id "
                f"{key_id_of(sealed)!r}): wrong key, or tampered (copied from another "
                "profile or consent type?)"
            )
        raise errors.EncryptionError(
            f"tenant {tenant_id} profile {profile_id}: the sealed ip_address of consent "
            f"{consent.consent_type!r} opens neither under this profile nor under a profile "
            f"the merge log names with it (key id {key_id_of(sealed)!r}): wrong key, or "
            "tampered (copied from another profile or consent type?)"
        )

    def _consent_needs_rewrite(self, consent: Consent) -> bool:
        """True when the consent's IP is plaintext or sealed under an older key."""
        if consent.ip_address_sealed is None:
            return consent.ip_address is not None
        return key_id_of(consent.ip_address_sealed) != self.keyring.current

    async def _reseal_consents(self, raw: CustomerProfile, log: _MergeLogOnce | None = None) -> int:
        """Re-seal, for ``raw``'s profile and under the current key, each consent IP that is
        plaintext, under an older key or sealed for a merge partner (through a save of the
        consents only: no field, no asset). Returns how many changed; one that opens nowhere
        is left as it is (reads refuse it)."""
        consents, changed = await self._resealed_consents(raw, log)
        if not changed:
            return 0
        try:
            await super()._save(
                trusted_replace(
                    raw,
                    {
                        "consents": consents,
                        "fields": {},
                        "field_history": {},
                        "assets": [],
                        "asset_history": [],
                    },
                )
            )
        except errors.NotFoundError:
            return 0  # soft-deleted: erased with the subject
        return changed

    async def _resealed_consents(
        self, raw: CustomerProfile, log: _MergeLogOnce | None = None
    ) -> tuple[list[Consent], int]:
        """``raw``'s consents as :meth:`_reseal_consents` would store them, and how many
        of them changed (the merge log from ``log`` when one is given)."""
        if not any(
            c.ip_address_sealed is not None or c.ip_address is not None for c in raw.consents
        ):
            return list(raw.consents), 0
        tenant_id, profile_id = raw.tenant_id, raw.id
        partners: tuple[UUID, ...] | None = None
        consents: list[Consent] = []
        changed = 0
        for consent in raw.consents:
            try:
                opened = self._open_consent(tenant_id, profile_id, consent)
                if not self._consent_needs_rewrite(consent):
                    consents.append(consent)
                    continue
            except _ConsentMovedError:
                if partners is None:
                    if log is None:
                        log = self._merge_log_once(tenant_id, profile_id)
                    _, partners = await log.get()
                try:
                    opened = self._open_consent(tenant_id, profile_id, consent, partners)
                except errors.EncryptionError:
                    logger.warning(
                        "tenant %s profile %s: a sealed consent IP opens under no profile a "
                        "merge names; left as it is (reads refuse it)",
                        tenant_id,
                        profile_id,
                    )
                    consents.append(consent)
                    continue
            consents.append(self._seal_consent(tenant_id, profile_id, opened))
            changed += 1
        return consents, changed

    # ---------------------------------------------------------------------------------
    # channel identities: sealed, looked up by their deterministic token
    # ---------------------------------------------------------------------------------

    def _seal_identity(self, tenant_id: UUID, identity: ChannelIdentity) -> ChannelIdentity:
        """``identity`` with its channel user id as the token under the current key."""
        user_id = identity.channel_user_id
        if user_id.startswith(IDENTITY_PREFIX):
            raise errors.ValidationError(
                f"channel_user_id values starting with {IDENTITY_PREFIX!r} are reserved for "
                "sealed identities"
            )
        token = self.keyring.seal_identity(user_id, _identity_aad(tenant_id, identity.channel))
        return trusted_replace(identity, {"channel_user_id": token})

    def _identity_tokens(self, tenant_id: UUID, channel: Channel, user_id: str) -> tuple[str, ...]:
        """Every stored form the id may have: the token under the current key, then under
        each older key (newest first; a rotation in progress), then the id itself (stored
        before encryption was turned on). Raises like :meth:`_seal_identity`.

        AES-SIV is deterministic, so the tokens of an id are kept with the opened envelopes
        (same bound, lifetime and erasure) for the keyring and setting they were made
        with: a lookup by channel identity seals nothing the second time."""
        keyring = self.keyring
        legacy = self.legacy_identities
        cache = self._identity_lookups
        key = (tenant_id, channel, user_id)
        hit = cache.get(key)
        if hit is not None and hit[0] is keyring and hit[1] is legacy:
            return hit[2]
        if user_id.startswith(IDENTITY_PREFIX):
            raise errors.ValidationError(
                f"channel_user_id values starting with {IDENTITY_PREFIX!r} are reserved for "
                "sealed identities"
            )
        aad = _identity_aad(tenant_id, channel)
        tokens = [keyring.seal_identity(user_id, aad)]
        for kid in reversed(keyring.identity_keys):
            if kid != keyring.current:
                tokens.append(keyring.seal_identity(user_id, aad, kid))
        if legacy:
            tokens.append(user_id)
        found = tuple(tokens)
        if self.opened_cache_size:
            if len(cache) >= self.opened_cache_size:
                del cache[next(iter(cache))]
            cache[key] = (keyring, legacy, found)
        return found

    def _open_token(self, tenant_id: UUID, channel: Channel, stored: str) -> str:
        if not stored.startswith(IDENTITY_PREFIX):
            return stored  # stored before encryption was on (rotate-keys seals it)
        cache = self._opened_identities
        hit = cache.get(stored)
        if hit is not None and hit[0] == tenant_id and hit[1] is channel:
            return hit[2]
        opened = self.keyring.open_identity(stored, _identity_aad(tenant_id, channel))
        if self.opened_cache_size:
            if len(cache) >= self.opened_cache_size:
                del cache[next(iter(cache))]
            cache[stored] = (tenant_id, channel, opened)
        return opened

    def _open_identities(
        self, tenant_id: UUID, identities: list[ChannelIdentity]
    ) -> list[ChannelIdentity]:
        opened = []
        for identity in identities:
            stored = identity.channel_user_id
            user_id = self._open_token(tenant_id, identity.channel, stored)
            opened.append(
                identity
                if user_id is stored
                else trusted_replace(identity, {"channel_user_id": user_id})
            )
        return opened

    async def _maybe(
        self, profile: CustomerProfile | None, *, in_place: bool = False
    ) -> CustomerProfile | None:
        """The opened profile; the merge log is read only when a row is sealed for another
        profile (a merge's rows not yet re-sealed, or tampering). ``in_place``: see
        :meth:`_decrypt_profile` (the read hooks, whose result nothing else holds)."""
        if profile is None:
            return None
        try:
            return self._decrypt_profile(profile, in_place=in_place)
        except RowMovedError:
            return await self._reopen(profile, in_place)

    async def _reopen(self, profile: CustomerProfile, in_place: bool) -> CustomerProfile:
        """:meth:`_decrypt_profile` with the merge log, after it raised RowMovedError."""
        moved, partners = await self._merge_log(profile.tenant_id, profile.id)
        return self._decrypt_profile(profile, moved, partners, in_place=in_place)

    async def _open_profile(
        self, profile: CustomerProfile, *, in_place: bool = False
    ) -> CustomerProfile:
        opened = await self._maybe(profile, in_place=in_place)
        assert opened is not None
        return opened

    async def _open_versions(
        self, tenant_id: UUID, profile_id: UUID, items: list[ProfileField]
    ) -> list[ProfileField]:
        """``items``, just read from the inner store for this caller alone, opened in place
        (as a profile read's, :meth:`_decrypt_profile`)."""
        self._expire_opened()
        head = _tenant_head(tenant_id)
        try:
            self._open_in_place(head, items, profile_id, None)
        except RowMovedError:
            moved = await self._moved_rows(tenant_id, profile_id)
            self._open_in_place(head, items, profile_id, moved)
        return items

    async def _moved_rows(self, tenant_id: UUID, profile_id: UUID) -> dict[UUID, set[UUID]]:
        """Field version id -> the profiles a merge (per the merge log) moved it between,
        for the merges touching ``profile_id``."""
        moved, _ = await self._merge_log(tenant_id, profile_id)
        return moved

    def _merge_log_once(self, tenant_id: UUID, profile_id: UUID) -> _MergeLogOnce:
        return _MergeLogOnce(functools.partial(self._merge_log, tenant_id, profile_id))

    async def _merge_log(self, tenant_id: UUID, profile_id: UUID) -> _MovedAndPartners:
        """From one read of the merge log: :meth:`_moved_rows`, and the profiles a merge
        names together with ``profile_id`` (merge partners)."""
        try:
            records = await super()._get_merge_log(tenant_id, profile_id)
        except NotImplementedError:
            return {}, ()
        moved: dict[UUID, set[UUID]] = {}
        partners: dict[UUID, None] = {}
        for record in records:
            pair = (record.source_profile_id, record.target_profile_id)
            for field_id in record.moved_field_ids:
                moved.setdefault(field_id, set()).update(pair)
            for other in pair:
                if other != profile_id:
                    partners[other] = None
        return moved, tuple(partners)

    async def _sealer(
        self, tenant_id: UUID, profile_id: UUID, plaintext: list[str] | None = None
    ) -> Callable[[ProfileField], ProfileField]:
        """The sealing of one write; names it leaves plaintext are added to ``plaintext``."""
        names = None if self.encrypt_all else await self._pii_names(tenant_id)
        head = _tenant_head(tenant_id)

        def seal(item: ProfileField) -> ProfileField:
            self._refuse_envelopes(item)
            pii = names is None or item.name in names
            if not pii and plaintext is not None:
                plaintext.append(item.name)
            return self._encrypt_field(head, item, pii, profile_id)

        return seal

    # ---------------------------------------------------------------------------------
    # reads: decrypt
    # ---------------------------------------------------------------------------------

    async def _get_by_customer_id(
        self, tenant_id: UUID, customer_id: UUID, include_history: bool
    ) -> CustomerProfile | None:
        found = await super()._get_by_customer_id(tenant_id, customer_id, include_history)
        if found is None:
            return None
        try:  # (what _maybe does, one coroutine less on the hot path)
            return self._decrypt_profile(found, in_place=True)
        except RowMovedError:
            return await self._reopen(found, True)

    async def _get_by_id(
        self, tenant_id: UUID, profile_id: UUID, include_history: bool
    ) -> CustomerProfile | None:
        found = await super()._get_by_id(tenant_id, profile_id, include_history)
        if found is None:
            return None
        try:  # (as _get_by_customer_id)
            return self._decrypt_profile(found, in_place=True)
        except RowMovedError:
            return await self._reopen(found, True)

    async def _get_by_channel_identity(
        self, tenant_id: UUID, channel: Channel, channel_user_id: str, include_history: bool
    ) -> CustomerProfile | None:
        for token in self._identity_tokens(tenant_id, channel, channel_user_id):
            found = await super()._get_by_channel_identity(
                tenant_id, channel, token, include_history
            )
            if found is not None:
                return await self._open_profile(found, in_place=True)
        return None

    async def _get_or_create(self, tenant_id: UUID, candidate: CustomerProfile) -> CustomerProfile:
        # the identity may be stored under an older key or in plaintext: found first, so
        # that no second profile is created for it (the inner get_or_create knows only
        # the current token)
        for identity in candidate.channel_identities:
            tokens = self._identity_tokens(tenant_id, identity.channel, identity.channel_user_id)
            for token in tokens:
                found = await super()._get_by_channel_identity(
                    tenant_id, identity.channel, token, False
                )
                if found is not None:
                    return await self._open_profile(found)
        sealed = [self._seal_identity(tenant_id, i) for i in candidate.channel_identities]
        consents = [self._seal_consent(tenant_id, candidate.id, c) for c in candidate.consents]
        created = await super()._get_or_create(
            tenant_id,
            trusted_replace(candidate, {"channel_identities": sealed, "consents": consents}),
        )
        return await self._open_profile(created)

    async def _link_channel(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        identity: ChannelIdentity,
        *,
        max_per_channel: int | None = None,
    ) -> bool:
        sealed = self._seal_identity(tenant_id, identity)
        if max_per_channel is None:
            return await super()._link_channel(tenant_id, profile_id, sealed)
        await self._evict_tie_by_plaintext(tenant_id, profile_id, identity, max_per_channel)
        return await super()._link_channel(
            tenant_id, profile_id, sealed, max_per_channel=max_per_channel
        )

    async def _evict_tie_by_plaintext(
        self, tenant_id: UUID, profile_id: UUID, identity: ChannelIdentity, limit: int
    ) -> None:
        """The eviction rule breaks a ``created_at`` tie by the smaller channel user id;
        the store only sees tokens, whose order is unrelated. Only when the two orders
        pick different identities, the plaintext choice is released first (a save of the
        profile without it), and the store's limited link then has room. Not atomic with
        the link (a concurrent link may take the room): only ties need it."""
        raw = await super()._get_by_id(tenant_id, profile_id, False)
        if raw is None or any(
            i.channel == identity.channel
            and self._open_token(tenant_id, i.channel, i.channel_user_id)
            == identity.channel_user_id
            for i in raw.channel_identities
        ):
            return
        by_token = channel_eviction(raw.channel_identities, identity.channel, limit)
        if by_token is None:
            return
        opened = self._open_identities(tenant_id, raw.channel_identities)
        by_plaintext = channel_eviction(opened, identity.channel, limit)
        if by_plaintext is None:
            return
        position = opened.index(by_plaintext)
        if raw.channel_identities[position] is by_token:
            return
        kept = [i for n, i in enumerate(raw.channel_identities) if n != position]
        await super()._save(
            trusted_replace(
                raw, {"channel_identities": kept, "field_history": {}, "asset_history": []}
            )
        )

    async def _find_subject_profiles(
        self,
        tenant_id: UUID,
        channel: Channel | None,
        channel_user_id: str | None,
        customer_id: UUID | None,
    ) -> list[UUID]:
        if channel is None or channel_user_id is None:
            return await super()._find_subject_profiles(
                tenant_id, channel, channel_user_id, customer_id
            )
        found: list[UUID] = []
        for token in self._identity_tokens(tenant_id, channel, channel_user_id):
            for profile_id in await super()._find_subject_profiles(
                tenant_id, channel, token, customer_id
            ):
                if profile_id not in found:
                    found.append(profile_id)
        return found

    async def _get_merge_log(self, tenant_id: UUID, profile_id: UUID) -> list[MergeRecord]:
        records = await super()._get_merge_log(tenant_id, profile_id)
        return [self._open_merge_record(record) for record in records]

    def _open_merge_record(self, record: MergeRecord) -> MergeRecord:
        if record.moved_consents:
            # sealed for the source when it merged (or for the target, re-sealed since)
            partners = (record.target_profile_id,)
            consents = [
                self._open_consent(record.tenant_id, record.source_profile_id, c, partners)
                for c in record.moved_consents
            ]
            record = trusted_replace(record, {"moved_consents": consents})
        if not record.identities:
            return record
        moves: list[MergeIdentityMove] = []
        for move in record.identities:
            user_id = self._open_token(record.tenant_id, move.channel, move.channel_user_id)
            moves.append(
                move
                if user_id is move.channel_user_id
                else trusted_replace(move, {"channel_user_id": user_id})
            )
        return trusted_replace(record, {"identities": moves})

    async def _unmerge(self, tenant_id: UUID, merge_id: UUID) -> UnmergeResult:
        result = await super()._unmerge(tenant_id, merge_id)
        # the rows moved back are sealed for the target (re-sealed at the merge)
        await self._rebind(tenant_id, result.source_profile_id)
        if not result.restored_identities:
            return result
        opened = self._open_identities(tenant_id, result.restored_identities)
        return trusted_replace(result, {"restored_identities": opened})

    async def _get_field(
        self, tenant_id: UUID, profile_id: UUID, field_name: str, status: ItemStatus | None
    ) -> ProfileField | None:
        found = await super()._get_field(tenant_id, profile_id, field_name, status)
        if found is None:
            return None
        return (await self._open_versions(tenant_id, profile_id, [found]))[0]

    async def _get_field_history(
        self, tenant_id: UUID, profile_id: UUID, field_name: str
    ) -> list[ProfileField]:
        versions = await super()._get_field_history(tenant_id, profile_id, field_name)
        return await self._open_versions(tenant_id, profile_id, versions)

    async def _get_derivation_chain(
        self, tenant_id: UUID, item_id: UUID, item_type: ItemType, max_depth: int
    ) -> list[LineageEntry]:
        chain = await super()._get_derivation_chain(tenant_id, item_id, item_type, max_depth)
        opened: list[LineageEntry] = []
        for entry in chain:
            metadata = None
            if entry.type is ItemType.PROFILE_FIELD:
                metadata = self._open_metadata(
                    tenant_id, entry.id, entry.name, entry.source_metadata
                )
            opened.append(
                entry
                if metadata is None
                else entry.model_copy(update={"source_metadata": metadata})
            )
        return opened

    async def _get_derived_items(
        self, tenant_id: UUID, source_item_id: UUID
    ) -> tuple[list[ProfileField], list[ProfileAsset]]:
        fields, assets = await super()._get_derived_items(tenant_id, source_item_id)
        return (
            [self.decrypt_field(tenant_id, item) for item in fields],
            [self._open_asset(tenant_id, asset) for asset in assets],
        )

    async def _add_asset(
        self, tenant_id: UUID, profile_id: UUID, asset: ProfileAsset, supersede_existing: bool
    ) -> UUID:
        sealed = self._seal_asset(tenant_id, asset)
        return await super()._add_asset(tenant_id, profile_id, sealed, supersede_existing)

    async def _get_asset(
        self, tenant_id: UUID, profile_id: UUID, asset_id: UUID
    ) -> ProfileAsset | None:
        found = await super()._get_asset(tenant_id, profile_id, asset_id)
        return None if found is None else self._open_asset(tenant_id, found)

    async def _get_asset_by_name(
        self, tenant_id: UUID, profile_id: UUID, asset_name: str, status: ItemStatus | None
    ) -> ProfileAsset | None:
        found = await super()._get_asset_by_name(tenant_id, profile_id, asset_name, status)
        return None if found is None else self._open_asset(tenant_id, found)

    async def _export_profile(self, tenant_id: UUID, profile_id: UUID) -> CustomerProfile | None:
        return await self._maybe(
            await super()._export_profile(tenant_id, profile_id), in_place=True
        )

    # ---------------------------------------------------------------------------------
    # writes: encrypt PII, keep the registry
    # ---------------------------------------------------------------------------------

    async def _save(self, profile: CustomerProfile) -> UUID:
        plaintext: list[str] = []
        seal = await self._sealer(profile.tenant_id, profile.id, plaintext)
        fields = {name: seal(item) for name, item in profile.fields.items()}
        identities = [self._seal_identity(profile.tenant_id, i) for i in profile.channel_identities]
        assets = [self._seal_asset(profile.tenant_id, a) for a in profile.assets]
        consents = [self._seal_consent(profile.tenant_id, profile.id, c) for c in profile.consents]
        try:
            saved = await super()._save(
                trusted_replace(
                    profile,
                    {
                        "fields": fields,
                        "channel_identities": identities,
                        "assets": assets,
                        "consents": consents,
                    },
                )
            )
        except BaseException:
            if plaintext:  # maybe written: decided by the next registry read
                self._wrote_plaintext(profile.tenant_id, profile.id, plaintext)
            raise
        if plaintext:
            await self._fence(profile.tenant_id, profile.id, plaintext)
        return saved

    async def _update_field(
        self, tenant_id: UUID, profile_id: UUID, field: ProfileField, supersede_existing: bool
    ) -> UUID:
        plaintext: list[str] = []
        seal = await self._sealer(tenant_id, profile_id, plaintext)
        sealed = seal(field)
        try:
            written = await super()._update_field(tenant_id, profile_id, sealed, supersede_existing)
        except BaseException:
            if plaintext:  # maybe written: decided by the next registry read
                self._wrote_plaintext(tenant_id, profile_id, plaintext)
            raise
        if plaintext:
            await self._fence(tenant_id, profile_id, plaintext)
        return written

    async def _merge_profiles(
        self,
        tenant_id: UUID,
        source_profile_id: UUID,
        target_profile_id: UUID,
        choose_winner: MergeWinner,
        log: MergeLogRequest | None = None,
    ) -> None:
        # Policies compare sources, flags, confidence and times, never the (sealed) values.
        # The moved rows are sealed for the source: re-sealed for the target right after
        # (until then, and if this process dies first, reads accept them because the merge
        # log lists them; see the module docstring, *Ciphertext*).
        await super()._merge_profiles(
            tenant_id, source_profile_id, target_profile_id, choose_winner, log
        )
        await self._rebind(tenant_id, target_profile_id)

    async def _rebind(self, tenant_id: UUID, profile_id: UUID) -> int:
        """Re-seal, bound to ``profile_id``, the field versions stored under it that a
        merge or unmerge moved there (sealed for the other profile). A version sealed for
        a profile no merge names is left alone (reads refuse it) and logged."""
        raw = await super()._export_profile(tenant_id, profile_id)
        if raw is None:
            return 0
        # the consents moved here: re-sealed for this profile (a save of consents only)
        log = self._merge_log_once(tenant_id, profile_id)
        await self._reseal_consents(raw, log)  # not counted: the count is of field versions
        moved: dict[UUID, set[UUID]] | None = None
        head = _tenant_head(tenant_id)
        payloads: dict[UUID, tuple[Any, dict[str, Any]]] = {}
        for versions in raw.field_history.values():
            for item in versions:
                try:
                    self._decrypt_field(head, item, profile_id, {})
                    continue  # bound here (or v1 / plaintext): nothing to do
                except RowMovedError:
                    pass
                except errors.EncryptionError:
                    continue  # undecryptable: rotate-keys names it, reads refuse it
                if moved is None:
                    moved, _ = await log.get()
                try:
                    opened = self._decrypt_field(head, item, profile_id, moved)
                except RowMovedError:
                    logger.warning(
                        "tenant %s profile %s: field version %s is sealed for a profile no "
                        "merge moved it from; left as it is (reads refuse it)",
                        tenant_id,
                        profile_id,
                        item.id,
                    )
                    continue
                sealed = self._encrypt_field(head, opened, _is_envelope(item.value), profile_id)
                payloads[item.id] = (sealed.value, sealed.source_metadata)
        if not payloads:
            return 0
        return await super()._rewrite_field_payloads(tenant_id, profile_id, payloads)

    # ---------------------------------------------------------------------------------
    # erasure: no opened copy outlives it in this process
    # ---------------------------------------------------------------------------------

    async def _purge_profile(self, tenant_id: UUID, profile_id: UUID) -> bool:
        try:
            return await super()._purge_profile(tenant_id, profile_id)
        finally:
            self.forget_opened()

    async def _delete_item(self, tenant_id: UUID, item_id: UUID, item_type: ItemType) -> bool:
        try:
            return await super()._delete_item(tenant_id, item_id, item_type)
        finally:
            self.forget_opened()

    async def _erase_subject(
        self, tenant_id: UUID, profile_ids: list[UUID], merge_ids: list[UUID]
    ) -> int:
        try:
            return await super()._erase_subject(tenant_id, profile_ids, merge_ids)
        finally:
            self.forget_opened()

    @staticmethod
    def _refuse_registry_agent(agent_id: UUID) -> None:
        if agent_id == PII_REGISTRY_AGENT_ID:
            # the registry decides what is encrypted: editing or deleting a marker through
            # the public API would make later writes of that name plaintext
            raise errors.ValidationError(
                f"agent_id {PII_REGISTRY_AGENT_ID} is reserved for the PII registry; its "
                "definitions cannot be saved or deleted"
            )

    async def _save_field_definition(self, definition: ProfileFieldDefinition) -> UUID:
        self._refuse_registry_agent(definition.agent_id)
        # the view is read again by the next write (the registry is sticky, so this is
        # caution, not correctness: a name never stops being PII)
        self._forget_registry(definition.tenant_id)
        if definition.is_pii or definition.encryption_required:
            # registered first: there is never a moment where the definition says PII and
            # a concurrent write does not know it yet
            await self.register_pii_names(definition.tenant_id, [definition.name])
        return await super()._save_field_definition(definition)

    async def _delete_field_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> bool:
        self._refuse_registry_agent(agent_id)
        self._forget_registry(tenant_id)
        return await super()._delete_field_definition(tenant_id, agent_id, field_name)

    async def register_pii_names(self, tenant_id: UUID, names: Iterable[str]) -> list[str]:
        """Mark ``names`` as PII for the tenant (idempotent, sticky); return the new ones.

        Values of a newly registered name written *before* it became PII are re-sealed
        right away (every version, every profile of the tenant), as long as the tenant has
        at most :attr:`reseal_limit` profiles: marking a field PII is a rare administrative
        write, and leaving plaintext behind silently is worse than a slow save. Above the
        limit only the first ``reseal_limit`` profiles are re-sealed here and a warning
        names ``ccvault rotate-keys --tenant TENANT``, which seals the rest (it is
        idempotent and also re-seals plaintext of PII names).
        """
        tenant_id = check_uuid(tenant_id, "tenant_id")
        names = [check_field_name(name, "name") for name in names]
        known = await self.pii_field_names(tenant_id)
        added: list[str] = []
        for name in names:
            if name in known or name in added:
                continue
            added.append(name)
        if added:
            # this process seals the names from now on, before the markers are written
            # (sealing a name that then fails to register is harmless)
            view = self._registry.get(tenant_id)
            self._registry[tenant_id] = (
                (view[0] if view is not None else known) | frozenset(added),
                view[1] if view is not None else self.clock(),
            )
        for name in added:
            await super()._save_field_definition(
                ProfileFieldDefinition(
                    tenant_id=tenant_id,
                    agent_id=PII_REGISTRY_AGENT_ID,
                    name=name,
                    display_name=name,
                    description="ccvault PII registry marker: values of this name are encrypted",
                    is_pii=True,
                    encryption_required=True,
                    enabled=False,
                )
            )
        if added and not self.encrypt_all:
            await self._reseal_existing(tenant_id, added)
        return added

    async def _reseal_existing(self, tenant_id: UUID, names: list[str]) -> int:
        """Seal the plaintext versions of ``names`` already stored (bounded, see above)."""
        profile_ids = sorted(await super()._list_profile_ids(tenant_id))
        rewritten = 0
        for profile_id in profile_ids[: self.reseal_limit]:
            # rotate_profile rewrites exactly the versions not yet sealed under the current
            # key: here the plaintext versions of the new names (and nothing else, unless a
            # rotation is pending anyway)
            rewritten += await self._reseal_profile(tenant_id, profile_id)
        if len(profile_ids) > self.reseal_limit:
            logger.warning(
                "tenant %s: %s became PII; existing values were re-sealed in %d of %d "
                "profiles only (reseal_limit); run `ccvault rotate-keys --tenant %s` to seal "
                "the rest",
                tenant_id,
                ",".join(names),
                self.reseal_limit,
                len(profile_ids),
                tenant_id,
            )
        return rewritten

    async def _rewrite_field_payloads(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        payloads: dict[UUID, tuple[Any, dict[str, Any]]],
    ) -> int:
        # plaintext payloads from a caller: seal the PII ones, as every other write path does
        raw = await super()._export_profile(tenant_id, profile_id)
        if raw is None:
            return 0
        stored = {item.id: item for versions in raw.field_history.values() for item in versions}
        plaintext: list[str] = []
        seal = await self._sealer(tenant_id, profile_id, plaintext)
        sealed: dict[UUID, tuple[Any, dict[str, Any]]] = {}
        for field_id, (value, metadata) in payloads.items():
            item = stored.get(field_id)
            if item is None:
                continue
            new = seal(item.model_copy(update={"value": value, "source_metadata": metadata}))
            sealed[field_id] = (new.value, new.source_metadata)
        if not sealed:
            return 0
        try:
            rewritten = await super()._rewrite_field_payloads(tenant_id, profile_id, sealed)
        except BaseException:
            if plaintext:  # maybe written: decided by the next registry read
                self._wrote_plaintext(tenant_id, profile_id, plaintext)
            raise
        if plaintext:
            await self._fence(tenant_id, profile_id, plaintext)
        return rewritten

    # ---------------------------------------------------------------------------------
    # key rotation
    # ---------------------------------------------------------------------------------

    def _needs_rewrite(self, item: ProfileField, names: frozenset[str]) -> bool:
        value_kid = key_id_of(item.value)
        metadata_envelope = _metadata_envelope(item.source_metadata)
        metadata_kid = key_id_of(metadata_envelope)
        current = self.keyring.current
        if _is_v1(item.value) or _is_v1(metadata_envelope):
            return True  # v1: re-sealed as v2, bound to its profile
        if item.name in names or self.encrypt_all:
            # PII: rewrite unless both parts are already under the current key
            return value_kid != current or metadata_kid != current
        # not PII: metadata must be sealed under the current key (when not empty), and a
        # value sealed under an old key (the name was PII under encrypt_all) is re-sealed
        if item.source_metadata and metadata_kid != current:
            return True
        return value_kid not in (None, current)

    def _reseal(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        item: ProfileField,
        names: frozenset[str],
        moved: dict[UUID, set[UUID]] | None,
    ) -> ProfileField:
        """``item`` opened (its binding checked against ``profile_id``) and sealed again
        under the current key, bound to ``profile_id``."""
        opened = self.decrypt_field(tenant_id, item, profile_id, moved)
        pii = self.encrypt_all or item.name in names or _is_envelope(item.value)
        return self.encrypt_field(tenant_id, opened, pii=pii, profile_id=profile_id)

    async def rotate_profile(self, tenant_id: UUID, profile_id: UUID) -> int:
        """Re-encrypt under the current key every field version of one profile that holds
        PII plaintext or ciphertext under an older key; return how many were rewritten.

        Raises :class:`~ccvault.errors.EncryptionError` when a version cannot be decrypted
        (nothing is rewritten then); :meth:`rotate_keys` instead skips and names it.
        """
        rewritten, failures = await self._rotate_profile(tenant_id, profile_id)
        if failures:
            first = failures[0]
            raise errors.EncryptionError(
                f"tenant {first.tenant_id} profile {first.profile_id}: field version "
                f"{first.item_id} (key id {first.key_id!r}) cannot be decrypted: {first.reason}"
            )
        return rewritten

    async def _rotate_profile(
        self, tenant_id: UUID, profile_id: UUID, *, skip_failures: bool = False
    ) -> tuple[int, list[RotationFailure]]:
        """Re-seal what one profile needs; the versions that cannot be decrypted are
        returned as failures (and, with ``skip_failures``, the others are still rewritten)."""
        tenant_id = check_uuid(tenant_id, "tenant_id")
        profile_id = check_uuid(profile_id, "profile_id")
        names = await self._pii_names(tenant_id)
        raw = await super()._export_profile(tenant_id, profile_id)
        if raw is None:
            return 0, []
        payloads: dict[UUID, tuple[Any, dict[str, Any]]] = {}
        failures: list[RotationFailure] = []
        log = self._merge_log_once(tenant_id, profile_id)
        moved: dict[UUID, set[UUID]] | None = None
        for versions in raw.field_history.values():
            for item in versions:
                if not self._needs_rewrite(item, names):
                    continue
                try:
                    try:
                        sealed = self._reseal(tenant_id, profile_id, item, names, moved)
                    except RowMovedError:
                        if moved is not None:
                            raise
                        moved, _ = await log.get()
                        sealed = self._reseal(tenant_id, profile_id, item, names, moved)
                except errors.EncryptionError as exc:
                    failures.append(
                        RotationFailure(
                            tenant_id=tenant_id,
                            profile_id=profile_id,
                            item_id=item.id,
                            key_id=key_id_of(item.value)
                            or key_id_of(_metadata_envelope(item.source_metadata)),
                            reason=f"{type(exc).__name__}: {exc}",
                        )
                    )
                    continue
                payloads[item.id] = (sealed.value, sealed.source_metadata)
        if failures and not skip_failures:
            return 0, failures
        # identities first: the save carries no field, so it cannot undo the rewrite below
        await self._rotate_identities(tenant_id, raw, failures, log)
        if not payloads:
            return 0, failures
        return await super()._rewrite_field_payloads(tenant_id, profile_id, payloads), failures

    async def _rotate_identities(
        self,
        tenant_id: UUID,
        raw: CustomerProfile,
        failures: list[RotationFailure],
        log: _MergeLogOnce | None = None,
    ) -> int:
        """Re-seal the live profile's channel identities stored under an older key or in
        plaintext (a save of the profile's identities only: no field, no asset). Released
        identities of a soft-deleted profile cannot be rewritten through the hooks and are
        left as they are (they are erased with the subject). Returns how many changed."""
        current = f"{IDENTITY_PREFIX}{self.keyring.current}:"
        identities = raw.channel_identities
        assets: list[ProfileAsset] = []
        for asset in raw.assets:  # ACTIVE ones: a save updates those in place
            if not self._asset_needs_rewrite(asset):
                continue
            try:
                assets.append(self._seal_asset(tenant_id, self._open_asset(tenant_id, asset)))
            except errors.VaultError as exc:
                failures.append(
                    RotationFailure(
                        tenant_id=tenant_id,
                        profile_id=raw.id,
                        item_id=asset.id,
                        key_id=key_id_of(asset.storage_path),
                        reason=f"asset: {type(exc).__name__}: {exc}",
                    )
                )
        consents, consents_changed = await self._resealed_consents(raw, log)
        if (
            all(i.channel_user_id.startswith(current) for i in identities)
            and not assets
            and not consents_changed
        ):
            return 0
        resealed: list[ChannelIdentity] = []
        changed = 0
        for identity in identities:
            stored = identity.channel_user_id
            if stored.startswith(current):
                resealed.append(identity)
                continue
            try:
                user_id = self._open_token(tenant_id, identity.channel, stored)
                resealed.append(
                    self._seal_identity(
                        tenant_id, trusted_replace(identity, {"channel_user_id": user_id})
                    )
                )
            except errors.VaultError as exc:
                failures.append(
                    RotationFailure(
                        tenant_id=tenant_id,
                        profile_id=raw.id,
                        item_id=raw.id,
                        key_id=_identity_kid(stored),
                        reason=f"channel identity ({identity.channel.value}): "
                        f"{type(exc).__name__}: {exc}",
                    )
                )
                resealed.append(identity)
                continue
            changed += 1
        if not changed and not assets and not consents_changed:
            return 0
        try:
            await super()._save(
                trusted_replace(
                    raw,
                    {
                        "consents": consents,
                        "channel_identities": resealed,
                        "fields": {},
                        "field_history": {},
                        "assets": assets,
                        "asset_history": [],
                    },
                )
            )
        except errors.NotFoundError:
            return 0  # soft-deleted: see above
        self.identities_rotated += changed
        return changed

    async def rotate_keys(
        self,
        tenant_ids: Iterable[UUID] | None = None,
        progress: Callable[[RotationProgress], None] | None = None,
        *,
        batch_size: int = 100,
    ) -> list[RotationReport]:
        """Re-encrypt everything under the current key, tenant by tenant, in batches of at
        most ``batch_size`` profiles (ids in order).

        Idempotent: a second run rewrites nothing. A field version that cannot be decrypted
        (unknown key id, wrong key, tampered) does not stop the run: it is left as it is,
        named in its tenant's :attr:`RotationReport.failures` and in a warning of this
        module's logger (tenant, profile, item and key id: never a value), and every other
        version of that profile and of every later profile is still rotated.
        ``progress(RotationProgress)`` is called after each batch. Storage errors (the
        database is unreachable...) still stop the run: it can simply be run again.
        """
        if not 1 <= batch_size <= 10_000:
            raise errors.ValidationError(f"batch_size must be 1..10000, got {batch_size}")
        tenants = list(tenant_ids) if tenant_ids is not None else await self.list_tenant_ids()
        reports = []
        started = self.clock()
        done = total = rewritten = failed = 0
        for tenant_id in tenants:
            tenant_id = check_uuid(tenant_id, "tenant_id")
            report = RotationReport(tenant_id)
            profile_ids = sorted(await super()._list_profile_ids(tenant_id))
            total += len(profile_ids)
            for start in range(0, len(profile_ids), batch_size):
                for profile_id in profile_ids[start : start + batch_size]:
                    identities_before = self.identities_rotated
                    count, failures = await self._rotate_profile(
                        tenant_id, profile_id, skip_failures=True
                    )
                    # rows a merge moved here and nobody re-sealed (the merging process
                    # died first): bound to this profile now
                    count += await self._rebind(tenant_id, profile_id)
                    report.identities += self.identities_rotated - identities_before
                    for failure in failures:
                        logger.warning(
                            "rotate-keys: tenant %s profile %s field version %s (key id %s) "
                            "cannot be decrypted, left as it is: %s",
                            failure.tenant_id,
                            failure.profile_id,
                            failure.item_id,
                            failure.key_id,
                            failure.reason,
                        )
                    report.profiles += 1
                    report.rewritten += count
                    report.failures.extend(failures)
                    rewritten += count
                    failed += len(failures)
                    done += 1
                if progress is not None:
                    elapsed = max(self.clock() - started, 0.0)
                    rate = done / elapsed if elapsed > 0 else 0.0
                    progress(
                        RotationProgress(
                            tenant_id=tenant_id,
                            profiles_done=done,
                            profiles_total=total,
                            rewritten=rewritten,
                            failed=failed,
                            elapsed_seconds=elapsed,
                            rate=rate,
                            eta_seconds=(total - done) / rate if rate > 0 else None,
                        )
                    )
            reports.append(report)
        return reports
