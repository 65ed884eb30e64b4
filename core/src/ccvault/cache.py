"""``CachedProfileStore``: a Redis read-through cache in front of any :class:`ProfileStore`.

What is cached (DESIGN.md §5; ``P`` is the configured ``key_prefix``, ``{T}`` the tenant id as
a Redis Cluster hash tag, so every key of one tenant lives in one slot and the multi-key
commands and scripts below are legal on a cluster):

========================================  =================================================
``P profile:{T}:<profile_id>``            the profile without history (a "body")
``P profile:{T}:customer:<customer_id>``  pointer: customer id -> profile id
``P profile:{T}:identity:<ch>:<user>``    pointer: channel identity -> profile id
``P field_defs:{T}:<agent_id>``           every field definition of the agent
``P scenario_reqs:{T}:<scenario_id>``     a hash: step id (``-`` = scenario-wide) -> list
``P deriv:{T}:<type>:<item_id>:<depth>``  a derivation chain
``P epoch:{T}:<ns>``                      the tenant's epoch token of a namespace:
                                          ``p`` profiles, ``l`` lineage, ``s`` schema;
                                          ``g``: the tenant's near-cache generation
========================================  =================================================

Reads with ``include_history=True`` bypass the cache. Expiry of fields is applied by the
public layer at read time, so a cached body never serves an expired field as ACTIVE.
Definitions are cached per agent as one list (enabled or not), requirements per scenario and
step, derivation chains per item; TTLs: ``cache_ttl`` (bodies, pointers, chains),
``field_defs_ttl``, ``scenario_reqs_ttl``.

**No stale reads: leases plus epochs.** The seed's read-through (miss, read the database,
``SET``) has a race: a reader that read the old row before a writer committed, and writes it
back after the writer invalidated, leaves stale data for the whole TTL. Here an entry's value
is either ``D<epoch><payload>`` (data) or ``L<epoch><token>`` (a lease):

* a hit is one ``MGET epoch entry`` (atomic; the entry counts only if it carries the current
  epoch token);
* a reader that misses atomically (one Lua script) puts a lease on the key *before* it reads
  the backend (or shares the lease already there), and afterwards stores its result only if
  that very lease is still in place and the epoch unchanged (a compare-and-set in Lua);
* every write, after the backend committed, deletes in one ``DEL`` the keys it changed (data
  *and* leases) and, for tenant-wide changes, the epoch key of the affected namespace, which
  makes every entry stamped with the old token unreadable and every open lease of that
  namespace unusable.

So a value can only be stored by a reader whose backend read began after the last
invalidation of that key had completed: once a write has completed, every entry that could
predate it is gone and cannot come back. Epoch tokens are random (never counters), so a lost
or evicted epoch key can never make old entries valid again; a lost lease only fails a fill.
Pointers need no lease and may even be stale (they are also kept in process memory): a body
reached through a pointer is used only if it still carries the customer id or identity looked
up, and bodies themselves are always current.

**Trusted entries.** A payload is a versioned, checksummed envelope
(:mod:`ccvault.cache_codec`). Profile bodies are built on a hit *without* pydantic
validation (they are what the backend returned, which it had validated when written): that
is what makes a hit cheaper than a database read. Definitions, requirements and chains are
built the same way (their column codecs derived from the models' annotations; a model whose
field types cannot be restored exactly would be stored as validated JSON instead). An entry
that is not intact and of this format (damaged, truncated, another format version or model
layout, the pre-envelope JSON, a foreign value) is read as a miss, logged without key or
content, and replaced by a lease, so the backend's data refills it. The checksum detects
damage, not an attacker able to write to Redis (who could always plant a well-formed entry):
Redis is inside the vault's trust boundary.

**Near tier.** A profile body decoded from a hit is also kept in process memory (at most
``near_cache_size`` bodies, each for at most ``near_cache_ttl``), with the tenant's
generation token read in the same MGET. A later read of it is one GET of that token: while
it holds the value seen, no write of the tenant has completed on any instance since (every
write deletes the generation in the same DEL as the keys it invalidates, and tokens are
random), and a copy of the kept profile is served — no body fetched, nothing decoded. Copies
share only immutable values with the kept template (:class:`~ccvault.cache_codec.NearProfile`),
so a caller changing what it got changes nothing else. Any write of the tenant ends every
near copy of it (coarse on purpose: the check stays one small GET); the next read takes the
Redis entry again. A purge drops this process's copy at once; other processes' copies are
never served again (the generation is gone) and leave memory at their next read, LRU
eviction or ``near_cache_ttl``.

**Pushed invalidations** (``[redis] near_cache_invalidation = "push"``; the default
``"check"`` is the strict behaviour above). The cache keeps one dedicated Redis connection
of its own (not from the pool) in RESP2 with ``CLIENT TRACKING ON REDIRECT <its own id>
BCAST PREFIX <P>epoch:`` and ``SUBSCRIBE __redis__:invalidate``: Redis then tells it about
every change of a key under the prefix, and a background task reads those messages. A
message naming a tenant's generation key ends the trust in that tenant's near copies (a
per-tenant invalidation counter moves); one with no key list (``FLUSHDB``, ``FLUSHALL``)
ends all of them. A near copy is then served with **no Redis round trip** while: the
tracking connection has been healthy without a break since the copy's generation was read
(a session counter moves on every connect and every failure), the tenant's counter is still
the one taken *before* the read of that generation (so an invalidation processed between
the read and the store of the copy is never lost), the server's run tag is unchanged, the
near TTL holds, the tenant is not poisoned and the cache not bypassed. Otherwise the read
falls back to the GET of the generation above (and may then trust the copy again, with a
counter snapshot taken before that GET). A copy is trusted only if its generation came from
the server the tracking connection is open to (the run tag of each, see Restarts): after a
failover behind the same address, copies read from the new server are never trusted on the
strength of a connection still open to the old one. The tracking connection is checked by
a PING every ``retry_after`` seconds (at least 0.1 s; answer within ``operation_timeout``),
followed by a PING through the pool, which learns the run tag of the server the pool
reaches now: another server than the tracking connection's ends that connection. When it
fails, breaks or its end is read, it is marked unhealthy at once (every copy falls back to
the GET) and reconnected, to where the pool leads, in the background with a back-off from
``retry_after`` (at least 10 ms) doubling up to ``max_retry_interval``; reads never wait
for it. The task keeping it runs on the event loop of the read that started it; a read on
another loop (the first one stopped without cancelling it) starts it anew there, and copies
stamped before are checked by a GET. It needs a plain ``redis.asyncio.Redis`` client (with
a cluster client, ``"push"`` acts as ``"check"``, with a warning).

*The trade-off, precisely:* writes of this process end its near copies synchronously (as in
``"check"``); a write on **another** instance becomes visible here once Redis has delivered
its invalidation message and this process's event loop has read it — Redis (6, 7) queues
the broadcast message in the same event-loop pass as the ``DEL``, before it sends the
writer its reply, so this is normally well under a millisecond later
(``benchmarks/cache_bench.py`` measures it between two processes: see
``benchmarks/RESULTS.md``), but it is not at the moment the writer's ``DEL`` returns. A
tracking connection that breaks is noticed the same way (when its end is read); if Redis
becomes unreachable silently (no error, no answer), or the pool's connections now lead to
another server while the tracking connection is still open to the old one, or the cache's
database was swapped (``SWAPDB``, for which Redis pushes nothing: the tracking session
keeps a marker key of its own, ``<P>near-session:<random>``, refreshed and checked with
``SET ... GET``, Redis 6.2+), copies may be served for at most the heartbeat interval plus
twice ``operation_timeout`` before the heartbeat notices. ``"check"`` keeps the strict
guarantee: a read after a completed write on any instance never sees old data.
:meth:`CachedProfileStore.sync_invalidations` restores that guarantee on demand: it sends a
PING on the tracking connection and waits for its answer, so every invalidation of a write
completed before the call has been processed when it returns, and then runs the heartbeat's
server and marker check. Watch it with ``ccvault_cache_tracking_up`` (open caches whose
session is healthy), ``ccvault_cache_tracking_lost_total`` and
``ccvault_cache_near_hits_total{check}`` (``pushed``: served with no round trip;
``checked``: after a GET).

**Restarts.** Epoch and generation tokens begin with the Redis server's *run tag* (the
start of its ``run_id``, which changes on every restart). The read script reads it with
``INFO`` on the server itself; the MGET and GET fast paths compare with the tag this
process learned when it opened the connection the answer came on (a connect callback runs
``INFO`` on every new connection, before the connection's first command; a restarted server
only ever answers on new connections). So entries a restarted server restored from a
snapshot or an append-only file — including ones whose invalidation was lost because the
writer died while Redis was down — carry the old tag and are never served by any process;
the first read of each tenant namespace replaces its epoch. A restart costs a cold cache.
Without ``INFO`` (an ACL that refuses it) the cache still works, fast paths off, but
restarts are not detected; the fast paths need a plain ``redis.asyncio.Redis`` client (a
cluster client reads through the script, which checks the tag in Lua).

**Size.** An entry larger than ``max_body_bytes`` (``[redis] max_entry_bytes``) is served
from the backend and never cached, counted in ``ccvault_cache_oversized_total{kind}``: one
big profile neither times out fills nor makes the cache bypassed for every tenant.

**Derivation chains** are cached only when *closed*: full depth, or ending at an item
without a source item, or at a cycle. A chain that stopped at a missing source item (or the
``[]`` of an unknown item) is always read from the backend, since the next item written may
be that very one. So writes that only add items (``update_field``, ``add_asset``: a new item
has a new id, and superseding changes statuses, which chains do not show) leave cached
chains alone; writes that change or remove stored items (save, delete, delete_item, purge,
rewrite_field_payloads) reset the tenant's lineage epoch.

**Redis faults.** Every Redis call is bounded by ``operation_timeout``. On any Redis error
the cache is bypassed (reads and writes go to the backend only) for ``retry_after`` seconds.
A write that could not invalidate (Redis down or slow, the call cancelled, or the backend
write's outcome unknown) *poisons* its tenant: the tenant's cache is not read again until
all its epoch keys have been deleted in Redis (more than ``max_dirty_tenants`` poisoned
tenants: every epoch key under the prefix is deleted). That recovery is run by the first
operation after ``retry_after``, by a background task that retries with a bounded back-off
(``retry_after``, at least 10 ms, doubling up to ``max_retry_interval``) without waiting
for another call, and once more, bounded by ``close_timeout``, by :meth:`aclose`. Entries
that missed an invalidation while Redis was away, even ones restored from a snapshot, are
therefore never served by this process; and after a Redis *restart* by no process at all
(see Restarts).
**Remaining window:** when Redis stays up but unreachable from one process only (its own
connection broken, a partition), other processes sharing the Redis cannot know about that
process's lost invalidations; they may serve such an entry (or a near copy) until that
process reaches Redis again and its retry has run (at most ``max_retry_interval`` after),
or, if it never does (it dies while partitioned), until the entry's TTL.

**Erasure.** ``purge_profile`` deletes, after the backend purge, every key that holds the
profile (body, pointers, cached chains). If that cannot be done, the erasure stays pending
(retried like a lost invalidation) and the purge raises
:class:`~ccvault.errors.ProviderUnavailableError`: the profile is gone from the database,
the caller retries the purge, and a retried purge (the backend then has nothing left and
answers False) still performs the erasure, which is idempotent.

Metrics (:mod:`ccvault.metrics`): every cached read counts a hit or a miss (a read served by
the backend because the cache is bypassed counts as a miss); every write that invalidated
something counts one ``profile_cache_invalidations_total{reason}`` (reason = the write, or
``redis_recovery`` when a poisoned tenant is cleared).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from pydantic import TypeAdapter

from ccvault import errors, metrics
from ccvault.batches import KeysetBatch
from ccvault.cache_codec import (
    CorruptEntry,
    ModelListCodec,
    NearProfile,
    decode_json,
    decode_profile,
    encode_json,
    encode_profile,
)
from ccvault.extras import requires_extra
from ccvault.models import (
    Channel,
    ChannelIdentity,
    CustomerProfile,
    ItemType,
    LineageEntry,
    ProfileAsset,
    ProfileField,
    ProfileFieldDefinition,
    ScenarioFieldRequirement,
    UnmergeResult,
)
from ccvault.rules.merge import MergeLogRequest
from ccvault.store import ForwardingProfileStore, MergeWinner, ProfileStore, lineage_target

with requires_extra("cache", "The Redis profile cache (ccvault.cache)"):
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError, ResponseError

if TYPE_CHECKING:
    from ccvault.settings import VaultSettings

__all__ = ["CachedProfileStore", "sync_invalidations"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# epoch namespaces: a tenant-wide invalidation of one namespace leaves the others valid
_NS_PROFILES = "p"
_NS_LINEAGE = "l"
_NS_SCHEMA = "s"

_DEFS = TypeAdapter(list[ProfileFieldDefinition])
_REQS = TypeAdapter(list[ScenarioFieldRequirement])
_CHAIN = TypeAdapter(list[LineageEntry])

#: Errors after which the backend call's outcome is known to be "nothing written".
_NOTHING_WRITTEN = (errors.ValidationError, errors.NotFoundError, errors.ConflictError)

# KEYS: the namespace's epoch key, the entry key (or a pointer key), the tenant's near-cache
# generation key. ARGV: random part of an epoch to create if missing, hash field ('' =
# string key), lease token, ttl ms, body key prefix ('' = KEYS[2] is the entry itself, else
# KEYS[2] is a pointer whose value completes the body key; that body key is in the same
# slot, as it carries the same hash tag), '1' to replace the entry found by a lease even when
# it is current data (the caller found it corrupt), else '', random part of a generation to
# create if missing.
# Epochs and generations begin with the server's run tag (the start of its run_id, read
# here, never trusted from the caller): one restored from a snapshot by a restarted server
# carries the old tag and is replaced, which makes every entry stamped with it unusable.
# Returns {1, payload, target, epoch} on a hit, {2, epoch, token, target} with a lease,
# {0, epoch} on a miss without a lease (no pointer).
_READ = """
local info = redis.pcall('INFO', 'server')
local run = type(info) == 'string' and string.match(info, 'run_id:(%x+)')
-- INFO refused (an ACL without +info): entries work, restarts are not detected (documented)
local tag = run and string.sub(run, 1, 16) or '0000000000000000'
local e = redis.call('GET', KEYS[1])
if not e or string.sub(e, 1, 16) ~= tag then
  e = tag .. ARGV[1]
  redis.call('SET', KEYS[1], e)
end
local g = redis.call('GET', KEYS[3])
if not g or string.sub(g, 1, 16) ~= tag then
  redis.call('SET', KEYS[3], tag .. ARGV[7])
end
local key = KEYS[2]
local target = false
if ARGV[5] ~= '' then
  target = redis.call('GET', key)
  if not target then return {0, e} end
  key = ARGV[5] .. target
end
local field = ARGV[2]
local v
if field == '' then v = redis.call('GET', key) else v = redis.call('HGET', key, field) end
if v and ARGV[6] ~= '1' and string.sub(v, 2, 33) == e then
  local kind = string.sub(v, 1, 1)
  if kind == 'D' then return {1, string.sub(v, 34), target, e} end
  if kind == 'L' then return {2, e, string.sub(v, 34), target} end
end
local lease = 'L' .. e .. ARGV[3]
if field == '' then
  redis.call('SET', key, lease, 'PX', ARGV[4])
else
  redis.call('HSET', key, field, lease)
  if redis.call('PTTL', key) < 0 then redis.call('PEXPIRE', key, ARGV[4]) end
end
return {2, e, ARGV[3], target}
"""

# KEYS: the namespace's epoch key, the entry key, an index set, pointer keys...
# ARGV: epoch, hash field, lease token ('' = set the pointers only), ttl ms, payload,
# pointer value, what the index set records ('p' the pointers, 'e' the entry, '' nothing),
# the most members an 'e' index may hold (a full index means: do not cache the entry; the
# index expires with its entries, as it is not refreshed any more).
# Nothing happens unless the epoch is still the one seen before the backend read; the
# payload is stored only while our lease is in place. The index sets let an erasure find
# every key that holds a purged profile's ids or items.
_FILL = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 4, #KEYS do
  redis.call('SET', KEYS[i], ARGV[6], 'PX', ARGV[4])
  if ARGV[7] == 'p' then redis.call('SADD', KEYS[3], KEYS[i]) end
end
if ARGV[7] == 'p' and #KEYS > 3 then redis.call('PEXPIRE', KEYS[3], ARGV[4]) end
if ARGV[3] == '' then return 0 end
if ARGV[7] == 'e' and redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[8]) then return 0 end
local lease = 'L' .. ARGV[1] .. ARGV[3]
local field = ARGV[2]
if field == '' then
  if redis.call('GET', KEYS[2]) ~= lease then return 0 end
  redis.call('SET', KEYS[2], 'D' .. ARGV[1] .. ARGV[5], 'PX', ARGV[4])
else
  if redis.call('HGET', KEYS[2], field) ~= lease then return 0 end
  redis.call('HSET', KEYS[2], field, 'D' .. ARGV[1] .. ARGV[5])
end
if ARGV[7] == 'e' then
  redis.call('SADD', KEYS[3], KEYS[2])
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
end
return 1
"""

# KEYS: ARGV[1] index sets, then keys to delete. Deletes every key listed in the sets, the
# sets, and the keys, in one atomic step (all in one slot: one tenant's keys).
_ERASE = """
local sets = tonumber(ARGV[1])
for i = 1, sets do
  local members = redis.call('SMEMBERS', KEYS[i])
  for _, key in ipairs(members) do redis.call('DEL', key) end
end
for i = 1, #KEYS do redis.call('DEL', KEYS[i]) end
return 1
"""

_NAMESPACES = (_NS_PROFILES, _NS_LINEAGE, _NS_SCHEMA)
# the tenant's near-cache generation: replaced by every write of the tenant
_GEN = "g"
#: tenants whose hit and miss counters are kept at hand (cleared when full)
_COUNTER_CACHE_SIZE = 10_000
#: near-cache invalidation modes ([redis] near_cache_invalidation)
NEAR_INVALIDATION_MODES = ("check", "push")
#: tenants whose last pushed invalidation is remembered one by one (beyond: a common floor)
_INVALIDATION_MEMORY = 100_000
#: the Pub/Sub channel Redis sends tracking invalidations to (RESP2 redirect)
_INVALIDATE_CHANNEL = b"__redis__:invalidate"
#: a near copy's stamp that push mode never trusts without a GET (session -1 never exists)
_UNTRUSTED = (-1, 0)
# near hits by how the copy was trusted (ccvault_cache_near_hits_total{check})
_NEAR_PUSHED = metrics.CACHE_NEAR_HITS.labels("pushed")
_NEAR_CHECKED = metrics.CACHE_NEAR_HITS.labels("checked")
#: the shortest pause of a background retry loop (retry_after_seconds may be 0)
_MIN_PAUSE = 0.01


def _run_tag_of(info: Any) -> bytes | None:
    """The run tag (start of the run_id) in an ``INFO server`` answer, None if absent."""
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("run_id:"):
            return line[len("run_id:") :].strip()[:16].encode()
    return None


def _running_on(task: asyncio.Task[None] | None, loop: asyncio.AbstractEventLoop) -> bool:
    """Whether background ``task`` still runs on ``loop``: a task of another loop (one that
    stopped without cancelling it) never runs for this one, it is started anew instead."""
    return task is not None and not task.done() and task.get_loop() is loop


async def _cancel_here(task: asyncio.Task[None] | None) -> None:
    """Cancel background ``task`` and wait for its end, if it runs on this loop (one of an
    ended loop is never awaited from another)."""
    if task is not None and _running_on(task, asyncio.get_running_loop()):
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis glob pattern (SCAN MATCH)."""
    return "".join("\\" + c if c in "\\*?[]" else c for c in text)


def _json_encoder(adapter: TypeAdapter[Any]) -> Callable[[Any], bytes]:
    def encode(value: Any) -> bytes:
        return encode_json(adapter.dump_json(value))

    return encode


def _list_codec(
    cls: type[Any], adapter: TypeAdapter[Any]
) -> tuple[Callable[[bytes], Any], Callable[[Any], bytes | None]]:
    """(decode, encode) of a cached list of ``cls``: trusted columns when every field's
    type can be restored exactly (:class:`~ccvault.cache_codec.ModelListCodec`), else
    validated JSON."""
    codec = ModelListCodec(cls)
    if codec.usable:
        return codec.decode, codec.encode
    return partial(decode_json, validate=adapter.validate_json), _json_encoder(adapter)


_DEFS_CODEC = _list_codec(ProfileFieldDefinition, _DEFS)
_REQS_CODEC = _list_codec(ScenarioFieldRequirement, _REQS)
_CHAIN_CODEC = _list_codec(LineageEntry, _CHAIN)


def _discarding(exc: CorruptEntry) -> None:
    # no key, no content: either may carry personal data
    logger.warning("discarding a cache entry this vault cannot trust (%s): read as a miss", exc)


def _token() -> str:
    return os.urandom(8).hex()


def _ms(delta: timedelta) -> int:
    return max(1, int(delta.total_seconds() * 1000))


@dataclass(frozen=True)
class _Lookup:
    """The answer of the read script."""

    kind: int  # 0 miss without lease, 1 hit, 2 miss holding a lease
    payload: bytes = b""
    epoch: str = ""
    token: str = ""
    target: str | None = None
    #: the tenant's near-cache generation read with a hit (atomically), None if unknown
    gen: bytes | None = None


@dataclass
class _Invalidation:
    keys: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    #: index sets whose members are deleted too (erasure: purge, delete_item)
    erase: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.keys or self.namespaces)


class CachedProfileStore(ForwardingProfileStore):
    """A :class:`ProfileStore` that caches another one in Redis. See the module docstring.

    ``redis_client`` is a ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``
    created with ``decode_responses=False``; it is closed by :meth:`aclose` only when
    ``close_client`` (as :meth:`from_settings` does for the client it creates).
    ``lineage_ttl`` defaults to ``cache_ttl``. ``operation_timeout`` bounds every Redis call;
    after a Redis error the cache is bypassed for ``retry_after`` seconds (then one caller
    probes Redis while the others keep bypassing it). ``max_dirty_tenants``: poisoned
    tenants tracked one by one before a recovery clears every epoch under the prefix;
    ``pointer_cache_size``: pointers kept in process memory; ``index_limit``: derivation
    chains one tenant may have cached at once; ``max_retry_interval``: the longest pause of
    the background retry of pending invalidations and erasures; ``close_timeout``: how long
    :meth:`aclose` may spend flushing them. ``near_cache_invalidation``: ``"check"`` (one
    GET of the tenant's generation per near hit) or ``"push"`` (Redis client tracking, no
    round trip per near hit; see the module docstring and :meth:`sync_invalidations`).
    """

    def __init__(
        self,
        backend: ProfileStore,
        redis_client: Any,
        cache_ttl: timedelta = timedelta(minutes=30),
        field_defs_ttl: timedelta = timedelta(hours=1),
        scenario_reqs_ttl: timedelta = timedelta(hours=1),
        *,
        key_prefix: str = "",
        lineage_ttl: timedelta | None = None,
        operation_timeout: float = 0.5,
        retry_after: float = 1.0,
        max_dirty_tenants: int = 10_000,
        pointer_cache_size: int = 100_000,
        index_limit: int = 10_000,
        close_client: bool = False,
        max_retry_interval: float = 5.0,
        close_timeout: float = 2.0,
        near_cache_size: int = 1_000,
        near_cache_ttl: timedelta = timedelta(seconds=60),
        max_body_bytes: int = 4 * 1024 * 1024,
        near_cache_invalidation: str = "check",
    ) -> None:
        super().__init__(backend)
        if near_cache_invalidation not in NEAR_INVALIDATION_MODES:
            raise errors.ConfigurationError(
                f"redis.near_cache_invalidation must be one of {', '.join(NEAR_INVALIDATION_MODES)}"
                f", got {near_cache_invalidation!r}"
            )
        if "{" in key_prefix or "}" in key_prefix:
            raise errors.ConfigurationError(
                f"redis.key_prefix must not contain braces (they are the cluster hash tag): "
                f"{key_prefix!r}"
            )
        for name, ttl in (
            ("cache_ttl", cache_ttl),
            ("field_defs_ttl", field_defs_ttl),
            ("scenario_reqs_ttl", scenario_reqs_ttl),
        ):
            if ttl.total_seconds() <= 0:
                raise errors.ConfigurationError(f"{name} must be positive, got {ttl}")
        if operation_timeout <= 0:
            raise errors.ConfigurationError("operation_timeout must be positive")
        self.redis = redis_client
        self.key_prefix = key_prefix
        self._profile_ttl = _ms(cache_ttl)
        self._defs_ttl = _ms(field_defs_ttl)
        self._reqs_ttl = _ms(scenario_reqs_ttl)
        self._lineage_ttl = _ms(lineage_ttl or cache_ttl)
        self.operation_timeout = operation_timeout
        self.retry_after = retry_after
        self.max_dirty_tenants = max_dirty_tenants
        self._close_client = close_client
        self.pointer_cache_size = pointer_cache_size
        # most derivation chains one tenant may have cached at once (they are indexed for
        # erasure; beyond this, chains are served from the backend until the index expires)
        self.index_limit = index_limit
        # pointer key -> profile id, least recently used first
        self._pointers: OrderedDict[str, str] = OrderedDict()
        self._read_script = redis_client.register_script(_READ)
        self._fill_script = redis_client.register_script(_FILL)
        self._erase_script = redis_client.register_script(_ERASE)
        # health: the cache is bypassed while monotonic() < _down_until
        self._down_until = 0.0
        # tenants whose cache may have missed an invalidation; _dirty_all: too many to list
        self._dirty: dict[UUID, int] = {}
        self._dirty_all = False
        # bumped whenever a tenant is poisoned, so a hit fetched meanwhile is discarded
        self._poison_gen = 0
        self._recovering = False
        self._closed = False
        # purged profiles whose cache erasure has not been completed yet: (tenant, profile)
        self._erasures: dict[tuple[UUID, UUID], None] = {}
        # the background task retrying pending invalidations and erasures (bounded back-off)
        self.max_retry_interval = max(max_retry_interval, retry_after)
        self.close_timeout = close_timeout
        self._retry_task: asyncio.Task[None] | None = None
        self._closing = False
        self._tenant_counters: dict[str, tuple[Any, Any]] = {}
        # the near tier: body key -> (generation seen, decoded profile, monotonic deadline,
        # tracking session and tenant invalidation counter seen before that generation was
        # read: _UNTRUSTED unless push mode may serve it without a GET)
        self.near_cache_size = near_cache_size
        self._near_ttl = min(near_cache_ttl, cache_ttl).total_seconds()
        self._near: OrderedDict[str, tuple[bytes, NearProfile, float, int, int]] = OrderedDict()
        # bodies (encoded) larger than this are served but never cached
        self.max_body_bytes = max_body_bytes
        # the run tag (start of the run_id) of the Redis server this process talks to now,
        # learned on every new connection (None: unknown, the fast paths are off)
        self._run_tag: bytes | None = None
        self._connects = 0
        self._hooked = self._install_connect_hook(redis_client)
        # pushed invalidations (see the module docstring): usable with a plain client only
        self.near_cache_invalidation = near_cache_invalidation
        self._push = near_cache_invalidation == "push" and self._hooked and near_cache_size > 0
        if near_cache_invalidation == "push" and not self._push and near_cache_size > 0:
            logger.warning(
                "redis.near_cache_invalidation = 'push' needs a plain redis.asyncio.Redis "
                "client without a connect callback of its own: near copies are checked by a "
                "GET on every read instead"
            )
        # health of the tracking connection: copies are trusted only while _track_ok and
        # their session is the current one (moved on every connect and every failure)
        self._track_ok = False
        # whether this store counts in ccvault_cache_tracking_up (healthy, as last counted)
        self._track_counted = False
        # whether it counts in ccvault_cache_tracking_wanted (its tracking task started)
        self._track_wanted = False
        self._track_session = 0
        self._track_conn: Any = None
        # the Redis client id of the tracking connection (for operators and tests)
        self.tracking_client_id: int | None = None
        self._track_task: asyncio.Task[None] | None = None
        self._track_loop: asyncio.AbstractEventLoop | None = None
        self._track_reader: asyncio.Task[None] | None = None
        self._track_lock: asyncio.Lock | None = None
        # the run tag of the server the tracking connection is open to: a copy is trusted
        # only if its generation came from that very server (the pool may have moved to
        # another one behind the same address, a failover, which that connection never
        # hears of)
        self._track_tag: bytes | None = None
        # a key of this store's own (outside the tracked prefix) holding the current
        # session's random marker: the heartbeat checks it is still there (SWAPDB)
        self._marker_key = f"{key_prefix}near-session:{_token()}"
        self._track_mark = ""
        # the client's encoding of key names: pushed key names are decoded with it
        kwargs = getattr(getattr(redis_client, "connection_pool", None), "connection_kwargs", None)
        self._key_encoding = str((kwargs or {}).get("encoding") or "utf-8")
        # one future per PING sent on the tracking connection, answered in order
        self._pongs: deque[asyncio.Future[None]] = deque()
        # generation key -> the sequence number of its last invalidation (least recent
        # first); a key not listed has _inval_floor, which is never below its real one
        self._inval_seq = 0
        self._inval_floor = 0
        self._invalidated: OrderedDict[str, int] = OrderedDict()

    # =====================================================================================
    # which Redis server answers (restart detection)
    # =====================================================================================

    def _install_connect_hook(self, client: Any) -> bool:
        """Learn the server's run tag on every new connection of a plain ``redis.asyncio``
        client (its pool's connections, present and future). A restarted server (possibly
        restored from a snapshot holding entries that missed invalidations) has a new
        run_id, and every connection to it is a new connection: the tag is updated before
        the first command on it is sent, so any answer of the new server is judged against
        the new tag. Returns False (fast paths off, every read checks in Lua) for other
        clients (a cluster) or a client with a connect callback of its own."""
        pool = getattr(client, "connection_pool", None)
        kwargs = getattr(pool, "connection_kwargs", None)
        if not isinstance(kwargs, dict) or kwargs.get("redis_connect_func") is not None:
            return False
        existing = [
            *getattr(pool, "_available_connections", ()),
            *getattr(pool, "_in_use_connections", ()),
        ]
        if any(getattr(c, "redis_connect_func", None) is not None for c in existing):
            return False
        kwargs["redis_connect_func"] = self._on_connect
        for connection in existing:
            connection.redis_connect_func = self._on_connect
        return True

    async def _on_connect(self, connection: Any) -> None:
        await connection.on_connect()
        self._connects += 1
        await connection.send_command("INFO", "server")
        try:
            info = await connection.read_response()
        except ResponseError:
            # INFO refused (an ACL without +info): the run tag stays unknown, so the fast
            # paths stay off and every read goes through the script (which tolerates it)
            self._run_tag = None
            self._near.clear()
            return
        self._learn_run_tag(info)

    def _learn_run_tag(self, info: Any) -> None:
        tag = _run_tag_of(info)
        if tag is not None:
            if tag != self._run_tag:
                self._near.clear()
            self._run_tag = tag

    async def _probe_run_tag(self) -> None:
        """Learn the run tag through a command when no new connection has told it yet.

        Applied only if no connection was made meanwhile: an answer of a server that has
        restarted since must never override the tag a new connection has learned."""
        connects = self._connects
        info = await self._redis(lambda: self.redis.execute_command("INFO", "server"))
        if connects == self._connects and self._run_tag is None:
            if isinstance(info, dict):  # parsed by the client
                run_id = info.get("run_id")
                info = f"run_id:{run_id}" if run_id else ""
            self._learn_run_tag(info)

    @classmethod
    def from_settings(cls, inner: ProfileStore, settings: VaultSettings) -> CachedProfileStore:
        """Wrap ``inner`` with a Redis client built from ``settings.redis`` (closed by
        :meth:`aclose`) and the TTLs of ``settings.profile``."""
        from redis.asyncio import Redis
        from redis.asyncio.cluster import RedisCluster
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        conf = settings.redis
        options: dict[str, Any] = {
            "socket_timeout": conf.socket_timeout_seconds,
            "socket_connect_timeout": conf.connect_timeout_seconds,
            # no retries inside the client: a failure must reach us quickly so the cache
            # is bypassed; we retry after retry_after_seconds ourselves
            "retry": Retry(NoBackoff(), 0),
        }
        client: Any
        if conf.cluster:
            client = RedisCluster.from_url(conf.connection_url(), **options)
        else:
            client = Redis.from_url(conf.connection_url(), **options)
        profile = settings.profile
        return cls(
            inner,
            client,
            timedelta(seconds=profile.cache_ttl_seconds),
            timedelta(seconds=profile.field_definitions_ttl_seconds),
            timedelta(seconds=profile.scenario_requirements_ttl_seconds),
            key_prefix=conf.key_prefix,
            operation_timeout=conf.operation_timeout_seconds,
            retry_after=conf.retry_after_seconds,
            close_client=True,
            near_cache_size=conf.near_cache_size,
            max_body_bytes=conf.max_entry_bytes,
            near_cache_invalidation=conf.near_cache_invalidation,
        )

    async def aclose(self) -> None:
        """Flush what is pending, close the inner store, and the Redis client when this
        store created it.

        Pending invalidations (poisoned tenants) and cache erasures of purged profiles are
        retried once more, bounded by ``close_timeout`` seconds, so that other processes
        sharing the Redis stop serving what this process could not invalidate; whatever is
        still pending afterwards is logged (it then lasts at most until the entries' TTL).
        """
        try:
            await self._flush()
        finally:
            try:
                await super().aclose()
            finally:
                if self._close_client and not self._closed:
                    self._closed = True
                    await self.redis.aclose()

    async def _flush(self) -> None:
        self._closing = True
        await self._stop_tracking()
        task, self._retry_task = self._retry_task, None
        await _cancel_here(task)
        if not self._pending() or self._recovering:
            return
        done = False
        try:
            async with asyncio.timeout(self.close_timeout):
                done = await self._recover()
        except TimeoutError:
            done = False
        if not done:
            logger.warning(
                "closing with %d cache erasure(s) and %s poisoned tenant(s) still pending in "
                "Redis: other processes may serve those entries until their TTL",
                len(self._erasures),
                "all" if self._dirty_all else len(self._dirty),
            )

    # =====================================================================================
    # pushed invalidations (near_cache_invalidation = "push")
    # =====================================================================================

    async def sync_invalidations(self) -> None:
        """Process every pushed invalidation of a write completed before this call.

        Sends a PING on the tracking connection and waits for its answer: Redis queues the
        invalidation of a write before it answers the writer's ``DEL``, and answers in
        order, so when the PONG has been read every such invalidation has been processed.
        If the tracking connection fails meanwhile (or is not up) it is marked unhealthy,
        and then no near copy is served without a GET: either way, a read after this call
        sees every write completed before it. Then the heartbeat's check runs too: a pool
        that now reaches another server, or another database (``SWAPDB``), ends the tracking
        session the same way. Never raises for Redis failures. A no-op in ``"check"`` mode,
        where every near hit checks the generation anyway.
        """
        if not self._push:
            return
        self._start_tracking()
        session = self._track_session
        if await self._ping_tracking():
            try:
                await self._check_same_server()
            except RedisConnectionError:  # another server or database: copies checked again
                self._track_broken(session)

    @property
    def tracking_healthy(self) -> bool:
        """Whether near copies are trusted on pushed invalidations now (push mode, tracking
        connection up, and its server known: without ``INFO`` every copy is checked by a
        GET)."""
        return self._track_ok and self._track_tag is not None

    def _start_tracking(self) -> None:
        """Start the task that keeps the tracking connection (once per event loop; again if
        it died; never while closing)."""
        if self._closing:
            return
        if not self._track_wanted:
            self._track_wanted = True
            metrics.CACHE_TRACKING_WANTED.inc()
        loop = asyncio.get_running_loop()
        task = self._track_task
        if _running_on(task, loop):
            return
        if task is not None and self._track_loop is not loop:
            # its loop has ended (closed without cancelling it) or is another thread's: it
            # reads nothing for this loop, so nothing it stamped is trusted any more
            self._track_lost()
        self._track_loop = loop
        self._track_lock = asyncio.Lock()
        self._track_task = loop.create_task(self._track())

    async def _stop_tracking(self) -> None:
        task, self._track_task = self._track_task, None
        await _cancel_here(task)
        self._track_lost()
        if self._track_wanted:
            self._track_wanted = False
            metrics.CACHE_TRACKING_WANTED.dec()

    async def _track(self) -> None:
        """Keep the tracking connection: open it, read it, reconnect with a back-off."""
        pauses = self._backoff()
        warned = False
        while not self._closing:
            connection: Any = None
            try:
                connection, tag = await self._track_open()
                pauses = self._backoff()  # connected: the next failure starts over
                if warned:
                    logger.info("near-cache invalidations pushed by Redis again")
                    warned = False
                await self._track_serve(connection, tag)
            except (RedisError, OSError, TimeoutError) as exc:
                if not warned:
                    logger.warning(
                        "near-cache invalidation connection unavailable (%s: %s): near "
                        "copies are checked by a GET until it is back",
                        type(exc).__name__,
                        exc,
                    )
                    warned = True
            except Exception:  # never let the task die silently; keep reconnecting
                if not warned:
                    logger.exception("near-cache invalidation connection failed")
                    warned = True
            finally:
                self._track_lost()
                if connection is not None:
                    try:
                        await connection.disconnect(nowait=True)
                    except Exception:  # a failing close must not end the task
                        logger.debug("closing the invalidation connection failed")
            if self._closing:
                return
            await asyncio.sleep(next(pauses))  # back-off, not a synchronisation

    async def _track_open(self) -> tuple[Any, bytes | None]:
        """A new connection of our own (RESP2, never from the pool) that receives, as Pub/Sub
        messages, the invalidations of every key under ``<key_prefix>epoch:``; and the run
        tag of the server it is open to (None: INFO refused, no copy is trusted)."""
        pool = self.redis.connection_pool
        options = dict(pool.connection_kwargs)
        options.pop("redis_connect_func", None)
        options["protocol"] = 2
        options["health_check_interval"] = 0
        # maintenance notifications are RESP3 pushes: not for this RESP2 connection
        for key in [k for k in options if "maint_notifications" in k]:
            del options[key]
        options["maint_notifications_config"] = None
        connection = pool.connection_class(**options)
        try:
            async with asyncio.timeout(tracking_open_budget(self.operation_timeout)):
                await connection.connect()
                self.tracking_client_id, tag = await tracking_handshake(connection, self.key_prefix)
                if tag is None:
                    logger.warning(
                        "near-cache invalidation connection: INFO is refused (an ACL without "
                        "+info), so the server of a near copy cannot be told: every near copy "
                        "is checked by a GET, as in check mode"
                    )
                # the session's marker in the database the pool reads (see _check_same_server)
                self._track_mark = _token()
                await self.redis.set(self._marker_key, self._track_mark, px=self._marker_ttl())
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        return connection, tag

    def _marker_ttl(self) -> int:
        """Milliseconds a session marker outlives its last heartbeat (a stall longer than
        that only costs a reconnect)."""
        return int(max(self.retry_after, 0.1) * 1000 * 20) + 10_000

    async def _track_serve(self, connection: Any, tag: bytes | None) -> None:
        """Read the connection (a task of its own) and check it by a PING now and then."""
        self._track_conn = connection
        self._track_session += 1
        self._track_tag = tag
        self._track_ok = True
        self._count_tracking(self.tracking_healthy)
        reader = asyncio.get_running_loop().create_task(
            self._track_read(connection, self._track_session)
        )
        self._track_reader = reader
        try:
            while True:
                done, _ = await asyncio.wait([reader], timeout=max(self.retry_after, 0.1))
                if done:
                    if reader.cancelled():  # _track_broken: a PING went unanswered
                        raise RedisConnectionError("the tracking connection stopped answering")
                    reader.result()  # raises what ended it
                    raise RedisConnectionError("the tracking connection closed")
                if not await self._ping_tracking():
                    raise RedisConnectionError("the tracking connection stopped answering")
                await self._check_same_server()
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            self._track_reader = None

    async def _check_same_server(self) -> None:
        """Part of the heartbeat: one command through the pool, which (re)connects it if its
        connections were closed, and so learns the run tag of the server the pool reaches
        now. A server other than the tracking connection's (a failover behind the same
        address, the old server still up) ends the tracking connection, which reopens to
        where the pool leads: else a process whose every read is a trusted near copy would
        never talk to the new server, nor hear of its writes.

        That command refreshes the session's marker key (``SET ... GET``, Redis 6.2+) and
        reads what it held: anything but this session's marker means the pool now reads
        another database than the one the session started on (``SWAPDB``, for which Redis
        pushes nothing), or the marker was lost: the tracking connection is ended too."""
        mark = self._track_mark
        found: Any = mark
        try:
            # not through _redis: a heartbeat must not end a bypass the reads started
            async with asyncio.timeout(self.operation_timeout):
                # set(get=True), not execute_command("SET", ..., "GET"): redis-py's SET
                # response callback would turn the old value into True
                found = await self.redis.set(
                    self._marker_key, mark, px=self._marker_ttl(), get=True
                )
        except ResponseError:
            found = mark  # before Redis 6.2 (no SET ... GET): the server is still checked
        except (RedisError, OSError, TimeoutError):
            return  # the pool's reads find out for themselves; copies stay judged as before
        tag = self._run_tag
        if tag is not None and self._track_tag is not None and tag != self._track_tag:
            raise RedisConnectionError("the pool now reaches another Redis server")
        if _text(found) != mark:
            raise RedisConnectionError("the cache's database changed under the session")

    async def _track_read(self, connection: Any, session: int) -> None:
        try:
            while True:
                message = await connection.read_response(disable_decoding=True, timeout=math.inf)
                if not isinstance(message, list) or not message:
                    continue
                kind = message[0]
                if kind == b"message" and len(message) == 3 and message[1] == _INVALIDATE_CHANNEL:
                    self._on_invalidate(message[2])
                elif kind == b"pong" and self._pongs:
                    waiter = self._pongs.popleft()  # one per PING sent, answered in order
                    if not waiter.done():
                        waiter.set_result(None)
        finally:
            # whatever ended the reading (the connection's end, an error, a bug): from now
            # on invalidations are lost, so no copy is trusted, at once, not only when the
            # task keeping the connection has noticed
            if session == self._track_session:
                self._track_lost()

    async def _ping_tracking(self) -> bool:
        """PING on the tracking connection: True once its answer has been read (every
        message sent before has then been processed); False (and the connection marked
        broken) if it does not answer within ``operation_timeout``."""
        connection, session, lock = self._track_conn, self._track_session, self._track_lock
        if not self._track_ok or connection is None or lock is None:
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self.operation_timeout):
                async with lock:
                    if session != self._track_session:
                        return False
                    if not connection.is_connected:  # never let it reconnect untracked
                        self._track_broken(session)
                        return False
                    self._pongs.append(waiter)
                    await connection.send_packed_command(
                        connection.pack_command("PING"), check_health=False
                    )
                await waiter
        # AttributeError: redis-py writing on a connection that its reader closed between
        # the is_connected check and the write (the send runs in a task of its own)
        except (RedisError, OSError, TimeoutError, AttributeError):
            self._track_broken(session)
            return False
        return self._track_ok and session == self._track_session

    def _track_broken(self, session: int) -> None:
        """The tracking connection of ``session`` failed: trust no near copy, reconnect."""
        if session != self._track_session:
            return
        self._track_lost()
        reader = self._track_reader
        if reader is not None:
            reader.cancel()

    def _count_tracking(self, healthy: bool) -> None:
        """Keep ``ccvault_cache_tracking_up`` (and the count of lost sessions) in step with
        this store's tracking health: counted once per change, whichever path changed it."""
        if healthy == self._track_counted:
            return
        self._track_counted = healthy
        if healthy:
            metrics.CACHE_TRACKING_UP.inc()
            return
        metrics.CACHE_TRACKING_UP.dec()
        if not self._closing:
            metrics.CACHE_TRACKING_LOST.inc()

    def _track_lost(self) -> None:
        self._count_tracking(False)
        self._track_ok = False
        self._track_session += 1
        self._track_conn = None
        self._track_tag = None
        while self._pongs:
            waiter = self._pongs.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _on_invalidate(self, keys: Any) -> None:
        if keys is None:  # FLUSHDB, FLUSHALL: any key may be gone
            self._invalidate_all_near()
            return
        suffix = f":{_GEN}"
        encoding = self._key_encoding
        for key in keys:
            name = key.decode(encoding, errors="replace") if isinstance(key, bytes) else str(key)
            if name.endswith(suffix):
                self._bump(name)

    def _bump(self, gen_key: str) -> None:
        """The tenant of ``gen_key`` changed: no near copy stamped before is trusted."""
        self._inval_seq += 1
        self._invalidated[gen_key] = self._inval_seq
        self._invalidated.move_to_end(gen_key)
        if len(self._invalidated) > _INVALIDATION_MEMORY:
            # the least recent has the lowest number: forgotten tenants report the floor,
            # never lower than their own last invalidation
            self._inval_floor = self._invalidated.popitem(last=False)[1]

    def _invalidate_all_near(self) -> None:
        self._inval_seq += 1
        self._inval_floor = self._inval_seq
        self._invalidated.clear()
        self._near.clear()

    def _stamp(self, gen_key: str) -> tuple[int, int]:
        """Taken *before* a generation is read: what a near copy holding it is trusted by."""
        if not self._track_ok:
            return _UNTRUSTED
        return self._track_session, self._invalidated.get(gen_key, self._inval_floor)

    def _trusted(self, stamp: tuple[int, int], gen: bytes) -> tuple[int, int]:
        """``stamp`` if a copy of generation ``gen`` may be trusted by it: the generation
        came from the server the tracking connection of the stamp's session is open to
        (the pool may have moved to another server behind the same address)."""
        if stamp[0] != self._track_session or gen[:16] != self._track_tag:
            return _UNTRUSTED
        return stamp

    # =====================================================================================
    # keys
    # =====================================================================================

    def _epoch_key(self, tenant: UUID, namespace: str) -> str:
        return f"{self.key_prefix}epoch:{{{tenant}}}:{namespace}"

    def _epoch_keys(self, tenant: UUID) -> list[str]:
        return [self._epoch_key(tenant, namespace) for namespace in _NAMESPACES] + [
            self._gen_key(tenant)
        ]

    def _gen_key(self, tenant: UUID) -> str:
        # under the epoch: prefix, so that clearing every epoch clears generations too
        return f"{self.key_prefix}epoch:{{{tenant}}}:{_GEN}"

    def _body_prefix(self, tenant: UUID) -> str:
        return f"{self.key_prefix}profile:{{{tenant}}}:"

    def _body_key(self, tenant: UUID, profile_id: UUID) -> str:
        return f"{self.key_prefix}profile:{{{tenant}}}:{profile_id}"

    def _customer_key(self, tenant: UUID, customer_id: UUID) -> str:
        return f"{self.key_prefix}profile:{{{tenant}}}:customer:{customer_id}"

    def _identity_key(self, tenant: UUID, channel: Channel, channel_user_id: str) -> str:
        # hashed: a channel user id (a phone number, an address) is personal data
        digest = hashlib.blake2b(
            f"{channel.value}\0{channel_user_id}".encode(), digest_size=16
        ).hexdigest()
        return f"{self.key_prefix}profile:{{{tenant}}}:identity:{digest}"

    def _pointer_index(self, tenant: UUID, profile_id: UUID) -> str:
        return f"{self.key_prefix}pointers:{{{tenant}}}:{profile_id}"

    def _deriv_index(self, tenant: UUID) -> str:
        return f"{self.key_prefix}deriv_index:{{{tenant}}}"

    def _defs_key(self, tenant: UUID, agent_id: UUID) -> str:
        return f"{self.key_prefix}field_defs:{{{tenant}}}:{agent_id}"

    def _reqs_key(self, tenant: UUID, scenario_id: UUID) -> str:
        return f"{self.key_prefix}scenario_reqs:{{{tenant}}}:{scenario_id}"

    def _deriv_key(self, tenant: UUID, item_id: UUID, item_type: ItemType, depth: int) -> str:
        return f"{self.key_prefix}deriv:{{{tenant}}}:{item_type.value}:{item_id}:{depth}"

    def _pointer_keys(self, profile: CustomerProfile) -> list[str]:
        keys = [self._customer_key(profile.tenant_id, profile.customer_id)]
        keys.extend(
            self._identity_key(profile.tenant_id, i.channel, i.channel_user_id)
            for i in profile.channel_identities
        )
        return keys

    # =====================================================================================
    # health and poisoning
    # =====================================================================================

    @property
    def healthy(self) -> bool:
        """Whether the cache is in use right now (Redis reachable, nothing left to clear)."""
        return time.monotonic() >= self._down_until and not self._pending() and not self._recovering

    def _pending(self) -> bool:
        """Whether an invalidation or erasure is still owed to Redis."""
        return bool(self._dirty or self._dirty_all or self._erasures)

    def _mark_down(self, exc: BaseException) -> None:
        metrics.REDIS_ERRORS.labels(type(exc).__name__).inc()
        if time.monotonic() >= self._down_until:
            logger.warning(
                "Redis cache unavailable (%s: %s); serving from the backend for %.1fs",
                type(exc).__name__,
                exc,
                self.retry_after,
            )
        self._down_until = time.monotonic() + self.retry_after

    def _poison(self, tenant: UUID) -> None:
        """``tenant``'s cache may have missed an invalidation: stop reading it until cleared."""
        self._poison_gen += 1
        if self._push:
            self._bump(self._gen_key(tenant))
        self._schedule_retry()
        if self._dirty_all:
            return
        # the generation tells recovery whether the tenant was poisoned again meanwhile
        self._dirty[tenant] = self._poison_gen
        if len(self._dirty) > self.max_dirty_tenants:
            self._dirty.clear()
            self._dirty_all = True
            if self._push:
                self._invalidate_all_near()

    def _schedule_retry(self) -> None:
        """Start the background retry of what is pending, unless it already runs.

        Other processes sharing the Redis cannot know about this process's lost
        invalidations, so waiting for this process's next cache call is not enough: the
        retry clears them as soon as Redis answers again (back-off from ``retry_after``
        doubling up to ``max_retry_interval``).
        """
        if self._closing:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (never the case in an async call): next call clears
            return
        if _running_on(self._retry_task, loop):
            return
        self._retry_task = loop.create_task(self._retry_pending())

    def _backoff(self) -> Iterator[float]:
        """The pauses of a background retry loop: ``retry_after`` (at least 10 ms), doubling
        up to ``max_retry_interval``."""
        delay = max(self.retry_after, _MIN_PAUSE)
        while True:
            yield delay
            delay = max(min(delay * 2, self.max_retry_interval), _MIN_PAUSE)

    async def _retry_pending(self) -> None:
        pauses = self._backoff()
        pause = next(pauses)
        while self._pending() and not self._closing:
            await asyncio.sleep(pause)  # back-off between attempts, not a synchronisation
            if self._recovering:
                continue  # a caller is clearing it right now
            try:
                if not self._pending() or await self._recover():
                    return
            except Exception:  # never let the retry die silently; keep trying
                logger.exception("retrying pending Redis invalidations failed")
            pause = next(pauses)

    async def _redis(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """Run one Redis call, bounded by ``operation_timeout``."""
        async with asyncio.timeout(self.operation_timeout):
            result = await call()
        if self._down_until:
            self._down_until = 0.0  # Redis answered: it is reachable again
        return result

    async def _ready(self, tenant: UUID) -> bool:
        """Whether ``tenant``'s cache may be used now; clears poisoned tenants first."""
        now = time.monotonic()
        if now < self._down_until or self._recovering:
            metrics.CACHE_BYPASSES.labels("recovering" if self._recovering else "redis_down").inc()
            return False
        if self._down_until:
            # Redis failed before: this caller probes it, the others keep bypassing it
            self._down_until = now + self.retry_after
        if self._pending():
            return await self._recover()
        return True

    async def _recover(self) -> bool:
        """Complete pending erasures, delete the epoch keys of every poisoned tenant; True
        when nothing is left."""
        self._recovering = True
        try:
            while self._pending():
                for tenant, profile_id in list(self._erasures):
                    await self._redis(partial(self._erase, tenant, profile_id))
                    self._erasures.pop((tenant, profile_id), None)
                    metrics.PROFILE_CACHE_INVALIDATIONS.labels(
                        tenant_id=str(tenant), reason="purge"
                    ).inc()
                if self._dirty_all:
                    self._dirty_all = False
                    try:
                        await self._redis(self._delete_all_epochs)
                    except BaseException:
                        self._dirty_all = True
                        raise
                    metrics.PROFILE_CACHE_INVALIDATIONS.labels(
                        tenant_id="*", reason="redis_recovery"
                    ).inc()
                batch = dict(self._dirty)
                if batch:
                    epochs = [self._epoch_keys(tenant) for tenant in batch]
                    await self._redis(partial(self._delete_keys, epochs))
                    for tenant, generation in batch.items():
                        if self._dirty.get(tenant) == generation:
                            del self._dirty[tenant]
                    for tenant in batch:
                        metrics.PROFILE_CACHE_INVALIDATIONS.labels(
                            tenant_id=str(tenant), reason="redis_recovery"
                        ).inc()
            logger.info("Redis cache in use again")
            return True
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark_down(exc)
            return False
        finally:
            self._recovering = False

    async def _delete_keys(self, groups: Sequence[Sequence[str]]) -> None:
        # one command per group: each group is one tenant's, so one cluster slot
        pipe = self.redis.pipeline(transaction=False)
        for keys in groups:
            pipe.delete(*keys)
        await pipe.execute()

    async def _delete_all_epochs(self) -> None:
        # the prefix taken literally: a "*", "?", "[" or "\\" of it is no pattern
        pattern = f"{_glob_escape(self.key_prefix)}epoch:*"
        batch: list[str] = []
        async for key in self.redis.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                await self._delete_keys([[key] for key in batch])
                batch = []
        if batch:
            await self._delete_keys([[key] for key in batch])

    # =====================================================================================
    # the read-through machinery
    # =====================================================================================

    def _counters(self, tenant: UUID) -> tuple[Any, Any]:
        """The tenant's (hits, misses) counters, kept so a hit does not look its labels up."""
        # keyed by the label, which metrics.configure() may change (tenant_labels)
        label = metrics.tenant_label(tenant)
        found = self._tenant_counters.get(label)
        if found is None:
            found = (
                metrics.PROFILE_CACHE_HITS.labels(tenant_id=label),
                metrics.PROFILE_CACHE_MISSES.labels(tenant_id=label),
            )
            if len(self._tenant_counters) >= _COUNTER_CACHE_SIZE:
                self._tenant_counters.clear()
            self._tenant_counters[label] = found
        return found

    def _hit(self, tenant: UUID) -> None:
        self._counters(tenant)[0].inc()

    def _miss(self, tenant: UUID) -> None:
        self._counters(tenant)[1].inc()

    async def _lookup(
        self,
        tenant: UUID,
        namespace: str,
        key: str,
        hash_field: str,
        ttl: int,
        body_prefix: str = "",
        replace: bool = False,
    ) -> _Lookup:
        """Look ``key`` up; on a miss the read script leases it (or the pointed-at body).

        ``replace``: the entry there was found corrupt; lease it whatever it holds.
        """
        epoch_key = self._epoch_key(tenant, namespace)
        gen_key = self._gen_key(tenant)
        if not hash_field and not body_prefix and not replace and self._run_tag is not None:
            # the hit path is one plain MGET (atomic, one slot): no script, no copies. Only
            # while the server's run tag is known: it is compared once the answer is in
            # (a reconnect to a restarted server has updated it by then, see _on_connect)
            epoch, value, gen = await self._redis(
                lambda: self.redis.mget([epoch_key, key, gen_key])
            )
            run = self._run_tag
            if epoch is not None and value is not None and value[:1] == b"D":
                if value[1:33] == epoch and epoch[:16] == run:
                    return _Lookup(
                        1,
                        payload=value[33:],
                        epoch=epoch.decode(),
                        gen=gen if gen is not None and gen[:16] == run else None,
                    )
        answer = await self._redis(
            lambda: self._read_script(
                keys=[epoch_key, key, gen_key],
                args=[
                    _token(),
                    hash_field,
                    _token(),
                    ttl,
                    body_prefix,
                    "1" if replace else "",
                    _token(),
                ],
            )
        )
        kind = int(answer[0])
        if kind == 1:
            return _Lookup(
                1,
                payload=answer[1],
                target=_text(answer[2] if len(answer) > 2 else None),
                epoch=_text(answer[3] if len(answer) > 3 else None) or "",
            )
        if kind == 2:
            return _Lookup(
                2,
                epoch=_text(answer[1]) or "",
                token=_text(answer[2]) or "",
                target=_text(answer[3] if len(answer) > 3 else None),
            )
        return _Lookup(0, epoch=_text(answer[1]) or "")

    async def _fill(
        self,
        tenant: UUID,
        namespace: str,
        key: str,
        hash_field: str,
        ttl: int,
        lookup: _Lookup | None,
        payload: bytes | str,
        pointers: Sequence[str] = (),
        pointer_value: str = "",
        index: str = "",
        index_mode: str = "",
    ) -> None:
        """Store ``payload`` under our lease and set ``pointers``; failures only cost a miss.

        ``index`` is a set recording the pointers (``index_mode`` "p") or the entry ("e").
        """
        token = lookup.token if lookup is not None and lookup.kind == 2 else ""
        epoch = lookup.epoch if lookup is not None else ""
        if not token and not pointers:
            return
        try:
            await self._redis(
                lambda: self._fill_script(
                    keys=[self._epoch_key(tenant, namespace), key, index or key, *pointers],
                    args=[
                        epoch,
                        hash_field,
                        token,
                        ttl,
                        payload,
                        pointer_value,
                        index_mode,
                        self.index_limit,
                    ],
                )
            )
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark_down(exc)

    async def _cached(
        self,
        tenant: UUID,
        namespace: str,
        key: str,
        hash_field: str,
        ttl: int,
        load: Callable[[], Awaitable[_T]],
        decode: Callable[[bytes], _T],
        encode: Callable[[_T], bytes | None],
        index: str = "",
        cacheable: Callable[[_T], bool] | None = None,
    ) -> _T:
        """Read-through for a plain entry (no pointer): hit, else load and fill.

        ``index``: a set that records the entry once stored (for erasure); ``cacheable``:
        whether a loaded value may be stored (else it is served and forgotten).
        """
        lookup: _Lookup | None = None
        if await self._ready(tenant):
            generation = self._poison_gen
            try:
                lookup = await self._lookup(tenant, namespace, key, hash_field, ttl)
                if lookup.kind == 1:
                    try:
                        found = decode(lookup.payload)
                    except CorruptEntry as exc:
                        _discarding(exc)
                        lookup = await self._lookup(
                            tenant, namespace, key, hash_field, ttl, replace=True
                        )
                    else:
                        if generation == self._poison_gen:
                            self._hit(tenant)
                            return found
            except (RedisError, OSError, TimeoutError) as exc:
                self._mark_down(exc)
        self._miss(tenant)
        value = await load()
        if lookup is not None and lookup.kind == 2 and (cacheable is None or cacheable(value)):
            payload = encode(value)
            if payload is None:  # not representable in the cache: served, not stored
                return value
            if len(payload) > self.max_body_bytes:
                metrics.CACHE_OVERSIZED.labels(namespace).inc()
                return value
            await self._fill(
                tenant,
                namespace,
                key,
                hash_field,
                ttl,
                lookup,
                payload,
                index=index,
                index_mode="e" if index else "",
            )
        return value

    def _keep_near(
        self, body_key: str, gen: bytes, profile: CustomerProfile, stamp: tuple[int, int]
    ) -> None:
        """Keep a decoded body in the near tier (the template is built before ``profile``
        is handed to the caller, who may change it); ``stamp``: see :meth:`_stamp`."""
        if not self.near_cache_size:
            return
        try:
            kept = NearProfile(profile)
        except ValueError:
            return
        self._near[body_key] = (gen, kept, time.monotonic() + self._near_ttl, *stamp)
        self._near.move_to_end(body_key)
        while len(self._near) > self.near_cache_size:
            self._near.popitem(last=False)

    def _remember(self, pointer_keys: Iterable[str], profile_id: str) -> None:
        """Keep pointers in process memory too (they are checked on use, never trusted)."""
        for pointer in pointer_keys:
            self._pointers[pointer] = profile_id
            self._pointers.move_to_end(pointer)
        while len(self._pointers) > self.pointer_cache_size:
            self._pointers.popitem(last=False)

    async def _cached_profile(
        self,
        tenant: UUID,
        key: str,
        via_pointer: bool,
        matches: Callable[[CustomerProfile], bool],
        load: Callable[[], Awaitable[CustomerProfile | None]],
    ) -> CustomerProfile | None:
        """Read-through for profile bodies, by id or through a pointer key.

        A pointer (customer id or identity -> profile id) is taken from process memory when
        known, else resolved inside the read script. Either way the body found is used only
        if it ``matches`` the lookup: bodies are always current, pointers need not be.

        **Near tier.** A body decoded from a hit is also kept in process memory with the
        tenant's generation read in the same MGET. Any later read of that body is one GET of
        the generation: when it still holds the value seen (and the server's run tag), no
        write of the tenant has completed since, and a fresh copy of the kept profile is
        served without fetching or decoding the body. Every write deletes the generation
        together with the keys it invalidates (one DEL), so a read after a completed write
        on any instance never sees the old generation again.
        """
        lookup: _Lookup | None = None
        body_prefix = self._body_prefix(tenant)
        entry_key, resolve = key, ""
        if via_pointer:
            known = self._pointers.get(key)
            if known is not None:
                entry_key = body_prefix + known
            else:
                resolve = body_prefix
        if self._push and (
            self._track_task is None or self._track_loop is not asyncio.get_running_loop()
        ):
            self._start_tracking()
        if await self._ready(tenant):
            generation = self._poison_gen
            try:
                if self._hooked and self._run_tag is None:
                    await self._probe_run_tag()
                stamp = _UNTRUSTED
                if not resolve and self.near_cache_size:
                    near = self._near.get(entry_key)
                    if near is not None:
                        gen_key = self._gen_key(tenant)
                        if (
                            # push: nothing of the tenant invalidated since the generation
                            # was read, the tracking connection up all along (see _stamp)
                            near[3] == self._track_session
                            and self._track_ok
                            and near[4] == self._invalidated.get(gen_key, self._inval_floor)
                            and near[0][:16] == self._run_tag
                            and time.monotonic() < near[2]
                        ):
                            cached = near[1].copy()
                            if matches(cached):
                                self._hit(tenant)
                                _NEAR_PUSHED.inc()
                                return cached
                        if self._push:
                            stamp = self._stamp(gen_key)
                        gen = await self._redis(lambda: self.redis.get(gen_key))
                        if (
                            gen == near[0]
                            and gen[:16] == self._run_tag
                            and generation == self._poison_gen
                            and time.monotonic() < near[2]
                        ):
                            cached = near[1].copy()
                            if matches(cached):
                                stamp = self._trusted(stamp, gen)
                                if stamp != _UNTRUSTED and self._near.get(entry_key) is near:
                                    # trusted from now on: stamped before the GET
                                    self._near[entry_key] = (*near[:3], *stamp)
                                self._hit(tenant)
                                _NEAR_CHECKED.inc()
                                return cached
                        self._near.pop(entry_key, None)
                if self._push and not resolve:
                    stamp = self._stamp(self._gen_key(tenant))
                lookup = await self._lookup(
                    tenant, _NS_PROFILES, entry_key, "", self._profile_ttl, resolve
                )
                if lookup.kind == 1:
                    try:
                        cached = decode_profile(lookup.payload)
                    except CorruptEntry as exc:
                        # written by someone else, damaged or of an older format: a miss,
                        # and the entry is replaced by our lease (then by the backend's data)
                        _discarding(exc)
                        corrupt = entry_key if not resolve else body_prefix + (lookup.target or "")
                        lookup = await self._lookup(
                            tenant, _NS_PROFILES, corrupt, "", self._profile_ttl, replace=True
                        )
                        if resolve and lookup.kind == 2:
                            lookup = _Lookup(
                                2,
                                epoch=lookup.epoch,
                                token=lookup.token,
                                target=corrupt[len(body_prefix) :],
                            )
                    else:
                        if matches(cached) and generation == self._poison_gen:
                            self._hit(tenant)
                            if resolve and lookup.target:
                                self._remember([key], lookup.target)
                            if lookup.gen is not None and not resolve:
                                self._keep_near(
                                    entry_key,
                                    lookup.gen,
                                    cached,
                                    self._trusted(stamp, lookup.gen),
                                )
                            return cached
                        self._pointers.pop(key, None)
                        lookup = _Lookup(0, epoch=lookup.epoch)
            except (RedisError, OSError, TimeoutError) as exc:
                self._mark_down(exc)
        self._miss(tenant)
        profile = await load()
        if profile is None or lookup is None:
            if profile is None:
                self._pointers.pop(key, None)
            return profile
        body_key = self._body_key(tenant, profile.id)
        leased_key = body_prefix + (lookup.target or "") if resolve else entry_key
        # only the key leased before the backend read may be filled
        leased = lookup.kind == 2 and leased_key == body_key
        body = encode_profile(profile) if leased else None
        if body is not None and len(body) > self.max_body_bytes:
            # served, never cached: filling it would be slow for Redis and every reader
            metrics.CACHE_OVERSIZED.labels("profile").inc()
            body = None
        pointers = self._pointer_keys(profile)
        await self._fill(
            tenant,
            _NS_PROFILES,
            body_key,
            "",
            self._profile_ttl,
            lookup if leased and body is not None else None,
            body or b"",
            pointers,
            str(profile.id),
            self._pointer_index(tenant, profile.id),
            "p",
        )
        self._remember(pointers, str(profile.id))
        return profile

    # =====================================================================================
    # invalidation
    # =====================================================================================

    async def _invalidate(self, tenant: UUID, reason: str, what: _Invalidation) -> None:
        """Apply ``what`` in Redis, or poison the tenant when that cannot be done."""
        if not what:
            return
        if time.monotonic() < self._down_until:
            self._poison(tenant)
            return
        # one DEL (atomic, one slot): the entries and leases changed, and the epoch keys of
        # the namespaces reset tenant-wide
        # and the tenant's near-cache generation: every near copy of the tenant is judged
        # against it, so this DEL ends them all (on every instance) as it ends the entries
        keys = [
            *what.keys,
            *(self._epoch_key(tenant, ns) for ns in what.namespaces),
            self._gen_key(tenant),
        ]
        for key in what.keys:
            self._near.pop(key, None)
        if self._push:
            self._bump(self._gen_key(tenant))
        done = False
        try:
            if what.erase:
                await self._redis(
                    lambda: self._erase_script(keys=[*what.erase, *keys], args=[len(what.erase)])
                )
            else:
                await self._redis(lambda: self.redis.delete(*keys))
            done = True
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark_down(exc)
        finally:
            if self._push:  # this process's copies end now, not when the message arrives
                self._bump(self._gen_key(tenant))
            # also when cancelled: a lost invalidation must never go unnoticed
            if not done:
                self._poison(tenant)
        if done:
            metrics.PROFILE_CACHE_INVALIDATIONS.labels(tenant_id=str(tenant), reason=reason).inc()

    async def _write(
        self,
        tenant: UUID,
        reason: str,
        call: Awaitable[_T],
        plan: Callable[[_T], _Invalidation],
    ) -> _T:
        """Run the backend write, then invalidate what ``plan(result)`` says it changed.

        When the write fails with an error that means "nothing written", nothing is
        invalidated; on any other error (its outcome unknown) the tenant is poisoned.
        """
        try:
            result = await call
        except _NOTHING_WRITTEN:
            raise
        except BaseException:
            self._poison(tenant)
            raise
        await self._invalidate(tenant, reason, plan(result))
        return result

    # =====================================================================================
    # profiles
    # =====================================================================================

    async def _get_by_customer_id(
        self, tenant_id: UUID, customer_id: UUID, include_history: bool
    ) -> CustomerProfile | None:
        if include_history:
            return await super()._get_by_customer_id(tenant_id, customer_id, True)
        return await self._cached_profile(
            tenant_id,
            self._customer_key(tenant_id, customer_id),
            True,
            lambda p: p.customer_id == customer_id,
            partial(super()._get_by_customer_id, tenant_id, customer_id, False),
        )

    async def _get_by_id(
        self, tenant_id: UUID, profile_id: UUID, include_history: bool
    ) -> CustomerProfile | None:
        if include_history:
            return await super()._get_by_id(tenant_id, profile_id, True)
        return await self._cached_profile(
            tenant_id,
            self._body_key(tenant_id, profile_id),
            False,
            lambda p: p.id == profile_id,
            partial(super()._get_by_id, tenant_id, profile_id, False),
        )

    async def _get_by_channel_identity(
        self, tenant_id: UUID, channel: Channel, channel_user_id: str, include_history: bool
    ) -> CustomerProfile | None:
        if include_history:
            return await super()._get_by_channel_identity(tenant_id, channel, channel_user_id, True)
        return await self._cached_profile(
            tenant_id,
            self._identity_key(tenant_id, channel, channel_user_id),
            True,
            _owns(channel, channel_user_id),
            partial(super()._get_by_channel_identity, tenant_id, channel, channel_user_id, False),
        )

    async def _get_or_create(self, tenant_id: UUID, candidate: CustomerProfile) -> CustomerProfile:
        # creating a profile changes no cached entry (nothing negative is cached)
        identity = candidate.channel_identities[0]
        channel, channel_user_id = identity.channel, identity.channel_user_id
        found = await self._cached_profile(
            tenant_id,
            self._identity_key(tenant_id, channel, channel_user_id),
            True,
            _owns(channel, channel_user_id),
            partial(super()._get_or_create, tenant_id, candidate),
        )
        assert found is not None
        return found

    async def _save(self, profile: CustomerProfile) -> UUID:
        tenant = profile.tenant_id
        # save may rewrite stored items in place, which can change derivation chains
        lineage = [_NS_LINEAGE] if profile.fields or profile.assets else []
        return await self._write(
            tenant,
            "save",
            super()._save(profile),
            lambda _: _Invalidation([self._body_key(tenant, profile.id)], lineage),
        )

    async def _delete(self, tenant_id: UUID, profile_id: UUID) -> bool:
        return await self._write(
            tenant_id,
            "delete",
            super()._delete(tenant_id, profile_id),
            lambda deleted: (
                _Invalidation([self._body_key(tenant_id, profile_id)], [_NS_LINEAGE])
                if deleted
                else _Invalidation()
            ),
        )

    # =====================================================================================
    # fields and assets
    # =====================================================================================

    def _profile_and_lineage(self, tenant: UUID, profile_id: UUID) -> _Invalidation:
        return _Invalidation([self._body_key(tenant, profile_id)], [_NS_LINEAGE])

    def _new_item(self, tenant: UUID, profile_id: UUID) -> _Invalidation:
        # a new item (its id is new: reusing a stored id is a ConflictError) changes no
        # cached chain, as only closed chains are cached (see _get_derivation_chain); the
        # version it supersedes changes status only, which chains do not show
        return _Invalidation([self._body_key(tenant, profile_id)])

    async def _update_field(
        self, tenant_id: UUID, profile_id: UUID, field: ProfileField, supersede_existing: bool
    ) -> UUID:
        return await self._write(
            tenant_id,
            "update_field",
            super()._update_field(tenant_id, profile_id, field, supersede_existing),
            lambda _: self._new_item(tenant_id, profile_id),
        )

    async def _expire_stale_fields(
        self, tenant_id: UUID, profile_id: UUID | None, now: datetime
    ) -> int:
        def plan(count: int) -> _Invalidation:
            if count == 0:
                return _Invalidation()
            if profile_id is None:
                return _Invalidation([], [_NS_PROFILES])
            return _Invalidation([self._body_key(tenant_id, profile_id)])

        return await self._write(
            tenant_id, "expire", super()._expire_stale_fields(tenant_id, profile_id, now), plan
        )

    async def _expire_stale_fields_batch(
        self, tenant_id: UUID, profile_id: UUID | None, now: datetime, limit: int
    ) -> int:
        # per batch: a batch that changed rows invalidates at once, so a later failing batch
        # (or a crash between two) never leaves a cached profile showing a committed change
        def plan(count: int) -> _Invalidation:
            if count == 0:
                return _Invalidation()
            if profile_id is None:
                return _Invalidation([], [_NS_PROFILES])
            return _Invalidation([self._body_key(tenant_id, profile_id)])

        return await self._write(
            tenant_id,
            "expire",
            super()._expire_stale_fields_batch(tenant_id, profile_id, now, limit),
            plan,
        )

    async def _add_asset(
        self, tenant_id: UUID, profile_id: UUID, asset: ProfileAsset, supersede_existing: bool
    ) -> UUID:
        return await self._write(
            tenant_id,
            "add_asset",
            super()._add_asset(tenant_id, profile_id, asset, supersede_existing),
            lambda _: self._new_item(tenant_id, profile_id),
        )

    # =====================================================================================
    # lineage
    # =====================================================================================

    async def _get_derivation_chain(
        self, tenant_id: UUID, item_id: UUID, item_type: ItemType, max_depth: int
    ) -> list[LineageEntry]:
        """Chains are cached only when *closed*: no write that adds an item can change them.

        A chain is closed when it has ``max_depth`` entries, or its root has no source
        item, or the root's source is already in the chain (a cycle). A chain that stopped
        at a missing source item (or an unknown item: ``[]``) is served from the backend
        and never cached, because the item written next may be exactly that missing one.
        So writes of new items (update_field, add_asset) need not touch cached chains,
        and only writes that change or remove stored items reset the lineage epoch.
        Telling "no source" from "source missing" needs each entry's source link, which
        every ``_get_derivation_chain`` hook gives (:class:`~ccvault.models.LineageEntry`
        carries ``source_item_id`` and ``source_item_type``).
        """
        load = partial(super()._get_derivation_chain, tenant_id, item_id, item_type, max_depth)

        def closed(chain: list[LineageEntry]) -> bool:
            if len(chain) >= max_depth:
                return True
            if not chain:
                return False
            root = chain[0]
            if root.source_item_id is None or lineage_target(root.source_item_type) is None:
                return True
            return any(entry.id == root.source_item_id for entry in chain)

        return await self._cached(
            tenant_id,
            _NS_LINEAGE,
            self._deriv_key(tenant_id, item_id, item_type, max_depth),
            "",
            self._lineage_ttl,
            load,
            *_CHAIN_CODEC,
            self._deriv_index(tenant_id),
            closed,
        )

    # =====================================================================================
    # channels and merge
    # =====================================================================================

    async def _link_channel(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        identity: ChannelIdentity,
        *,
        max_per_channel: int | None = None,
    ) -> bool:
        # an identity evicted by max_per_channel leaves the profile's body, which is
        # invalidated: its pointer may stay but is never followed (the body reached through
        # it no longer carries that identity), so it resolves to nobody
        return await self._write(
            tenant_id,
            "link_channel",
            super()._link_channel(tenant_id, profile_id, identity, max_per_channel=max_per_channel),
            lambda linked: (
                _Invalidation([self._body_key(tenant_id, profile_id)])
                if linked
                else _Invalidation()
            ),
        )

    async def _merge_profiles(
        self,
        tenant_id: UUID,
        source_profile_id: UUID,
        target_profile_id: UUID,
        choose_winner: MergeWinner,
        log: MergeLogRequest | None = None,
    ) -> None:
        # items keep their ids, names and sources: derivation chains do not change
        await self._write(
            tenant_id,
            "merge",
            super()._merge_profiles(
                tenant_id, source_profile_id, target_profile_id, choose_winner, log
            ),
            lambda _: _Invalidation(
                [
                    self._body_key(tenant_id, source_profile_id),
                    self._body_key(tenant_id, target_profile_id),
                ]
            ),
        )

    async def _unmerge(self, tenant_id: UUID, merge_id: UUID) -> UnmergeResult:
        # items go back with their ids, names and sources: derivation chains do not change
        return await self._write(
            tenant_id,
            "unmerge",
            super()._unmerge(tenant_id, merge_id),
            lambda result: _Invalidation(
                [
                    self._body_key(tenant_id, result.source_profile_id),
                    self._body_key(tenant_id, result.target_profile_id),
                ]
            ),
        )

    # =====================================================================================
    # schema and requirements
    # =====================================================================================

    async def _all_definitions(
        self, tenant_id: UUID, agent_id: UUID
    ) -> list[ProfileFieldDefinition]:
        return await self._cached(
            tenant_id,
            _NS_SCHEMA,
            self._defs_key(tenant_id, agent_id),
            "",
            self._defs_ttl,
            partial(super()._get_field_definitions, tenant_id, agent_id, False),
            *_DEFS_CODEC,
        )

    async def _get_field_definitions(
        self, tenant_id: UUID, agent_id: UUID, enabled_only: bool
    ) -> list[ProfileFieldDefinition]:
        found = await self._all_definitions(tenant_id, agent_id)
        return [d for d in found if d.enabled or not enabled_only]

    async def _get_field_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> ProfileFieldDefinition | None:
        for definition in await self._all_definitions(tenant_id, agent_id):
            if definition.name == field_name:
                return definition
        return None

    async def _save_field_definition(self, definition: ProfileFieldDefinition) -> UUID:
        tenant, agent = definition.tenant_id, definition.agent_id
        return await self._write(
            tenant,
            "field_definition",
            super()._save_field_definition(definition),
            lambda _: _Invalidation([self._defs_key(tenant, agent)]),
        )

    async def _delete_field_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> bool:
        return await self._write(
            tenant_id,
            "field_definition",
            super()._delete_field_definition(tenant_id, agent_id, field_name),
            lambda deleted: (
                _Invalidation([self._defs_key(tenant_id, agent_id)]) if deleted else _Invalidation()
            ),
        )

    async def _get_scenario_requirements(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> list[ScenarioFieldRequirement]:
        return await self._cached(
            tenant_id,
            _NS_SCHEMA,
            self._reqs_key(tenant_id, scenario_id),
            "-" if step_id is None else str(step_id),
            self._reqs_ttl,
            partial(super()._get_scenario_requirements, tenant_id, scenario_id, step_id),
            *_REQS_CODEC,
        )

    async def _get_requirements_with_definitions(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> tuple[list[ScenarioFieldRequirement], dict[UUID, list[ProfileFieldDefinition]]]:
        # not forwarded: the base default reads through this cache's own requirement and
        # definition hooks, so a hit costs no database round trip
        return await ProfileStore._get_requirements_with_definitions(
            self, tenant_id, scenario_id, step_id
        )

    async def _save_scenario_requirement(self, requirement: ScenarioFieldRequirement) -> UUID:
        tenant, scenario = requirement.tenant_id, requirement.scenario_id
        # the whole scenario hash goes: an upsert may touch any step's list
        return await self._write(
            tenant,
            "scenario_requirement",
            super()._save_scenario_requirement(requirement),
            lambda _: _Invalidation([self._reqs_key(tenant, scenario)]),
        )

    async def _delete_scenario_requirements(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> int:
        return await self._write(
            tenant_id,
            "scenario_requirement",
            super()._delete_scenario_requirements(tenant_id, scenario_id, step_id),
            lambda count: (
                _Invalidation([self._reqs_key(tenant_id, scenario_id)])
                if count
                else _Invalidation()
            ),
        )

    # =====================================================================================
    # erasure, hard delete, orphans
    # =====================================================================================

    async def _erase(self, tenant: UUID, profile_id: UUID) -> None:
        """Take everything of a purged profile out of Redis (right to erasure), not just
        hide it. Idempotent: erasing twice, or a profile never cached, is harmless.

        The body, every pointer ever set to the profile (they hold its ids) and every cached
        chain (they may show its items) are deleted; the profile epoch is reset too, so a
        read that loaded the profile before the purge cannot put its pointers back.
        """
        keys = [
            self._pointer_index(tenant, profile_id),
            self._deriv_index(tenant),
            self._body_key(tenant, profile_id),
            self._epoch_key(tenant, _NS_PROFILES),
            self._epoch_key(tenant, _NS_LINEAGE),
            self._gen_key(tenant),
        ]
        self._near.pop(self._body_key(tenant, profile_id), None)
        if self._push:
            self._bump(self._gen_key(tenant))
        try:
            await self._erase_script(keys=keys, args=[2])
        finally:
            if self._push:
                self._bump(self._gen_key(tenant))

    async def _purge_profile(self, tenant_id: UUID, profile_id: UUID) -> bool:
        """Purge in the backend, then erase the profile from Redis.

        The erasure runs even when the backend had nothing to purge: a purge retried after
        its cache erasure failed must complete that erasure. When Redis cannot be reached
        (it is tried even while the cache is bypassed) the erasure stays pending: the tenant
        is poisoned, the background retry and :meth:`aclose` keep trying, and the caller gets
        :class:`~ccvault.errors.ProviderUnavailableError` so that it retries the purge.
        """
        pending = (tenant_id, profile_id)
        target = str(profile_id)
        # the near copy goes first: this process never serves it again, whatever happens
        self._near.pop(self._body_key(tenant_id, profile_id), None)
        for pointer in [k for k, v in self._pointers.items() if v == target]:
            del self._pointers[pointer]
        try:
            purged = await super()._purge_profile(tenant_id, profile_id)
        except _NOTHING_WRITTEN:
            raise
        except BaseException:
            # outcome unknown: it may have been purged, so the erasure is owed anyway
            self._erasures[pending] = None
            self._poison(tenant_id)
            raise
        done = False
        failure: BaseException | None = None
        try:
            await self._redis(partial(self._erase, tenant_id, profile_id))
            done = True
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark_down(exc)
            failure = exc
        finally:
            # also when cancelled: an erasure owed must never be forgotten
            if done:
                self._erasures.pop(pending, None)
            else:
                self._erasures[pending] = None
                self._poison(tenant_id)
        if failure is not None:
            raise errors.ProviderUnavailableError(
                f"profile {profile_id} was erased from the database; cache erasure pending "
                f"(Redis unreachable: {type(failure).__name__}) — retry the purge"
            ) from failure
        metrics.PROFILE_CACHE_INVALIDATIONS.labels(tenant_id=str(tenant_id), reason="purge").inc()
        return purged

    async def _erase_subject(
        self, tenant_id: UUID, profile_ids: list[UUID], merge_ids: list[UUID]
    ) -> int:
        """Erase the subject's profiles in the backend, then each one from Redis as
        :meth:`_purge_profile` does (body, every pointer to it: the identity and customer
        lookup keys, chains, epochs), with the same guarantee: an erasure Redis did not take
        stays pending and the call raises ProviderUnavailableError (issue 12)."""
        try:
            erased = await super()._erase_subject(tenant_id, profile_ids, merge_ids)
        except _NOTHING_WRITTEN:
            raise
        except BaseException:
            for profile_id in profile_ids:  # outcome unknown: the erasures are owed anyway
                self._erasures[(tenant_id, profile_id)] = None
            self._poison(tenant_id)
            raise
        for profile_id in profile_ids:
            # the backend has nothing left to purge: this runs the cache erasure only
            await self._purge_profile(tenant_id, profile_id)
        return erased

    async def _delete_item(self, tenant_id: UUID, item_id: UUID, item_type: ItemType) -> bool:
        # the owning profile is not known here: every body of the tenant goes
        return await self._write(
            tenant_id,
            "delete_item",
            super()._delete_item(tenant_id, item_id, item_type),
            lambda deleted: (
                _Invalidation([], [_NS_PROFILES, _NS_LINEAGE], [self._deriv_index(tenant_id)])
                if deleted
                else _Invalidation()
            ),
        )

    async def _rewrite_field_payloads(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        payloads: dict[UUID, tuple[Any, dict[str, Any]]],
    ) -> int:
        # values and source_metadata change: the body, and chains (they show source_metadata)
        return await self._write(
            tenant_id,
            "rewrite_field_payloads",
            super()._rewrite_field_payloads(tenant_id, profile_id, payloads),
            lambda count: (
                self._profile_and_lineage(tenant_id, profile_id) if count else _Invalidation()
            ),
        )

    async def _mark_orphans(self, tenant_id: UUID) -> int:
        # statuses change in unknown profiles; chains hold no status
        return await self._write(
            tenant_id,
            "mark_orphans",
            super()._mark_orphans(tenant_id),
            lambda count: _Invalidation([], [_NS_PROFILES]) if count else _Invalidation(),
        )

    async def _mark_orphans_batch(self, tenant_id: UUID, now: datetime, limit: int) -> int:
        # invalidated per batch, as _expire_stale_fields_batch
        return await self._write(
            tenant_id,
            "mark_orphans",
            super()._mark_orphans_batch(tenant_id, now, limit),
            lambda count: _Invalidation([], [_NS_PROFILES]) if count else _Invalidation(),
        )

    async def _mark_orphans_page(
        self, tenant_id: UUID, now: datetime, limit: int, after: str | None
    ) -> KeysetBatch:
        # invalidated per page, as _mark_orphans_batch
        return await self._write(
            tenant_id,
            "mark_orphans",
            super()._mark_orphans_page(tenant_id, now, limit, after),
            lambda page: _Invalidation([], [_NS_PROFILES]) if page.marked else _Invalidation(),
        )


def _owns(channel: Channel, channel_user_id: str) -> Callable[[CustomerProfile], bool]:
    def matches(profile: CustomerProfile) -> bool:
        return any(
            i.channel == channel and i.channel_user_id == channel_user_id
            for i in profile.channel_identities
        )

    return matches


#: the round trips of opening push mode's tracking session: connecting (and
#: authenticating), CLIENT ID, INFO, CLIENT TRACKING, SUBSCRIBE, the session marker's SET
#: through the pool (which may connect too)
_TRACKING_OPEN_ROUND_TRIPS = 8


def tracking_open_budget(operation_timeout: float) -> float:
    """Seconds the cache gives the opening of its tracking session (a background task, so
    no read waits on it): ``operation_timeout`` per round trip. ``ccvault config check``
    gives its own attempt the same budget, so it passes only where the cache's would."""
    return operation_timeout * _TRACKING_OPEN_ROUND_TRIPS


async def tracking_handshake(
    connection: Any, key_prefix: str, steps: list[str] | None = None
) -> tuple[int, bytes | None]:
    """Turn ``connection`` (a new RESP2 connection, connected) into push mode's tracking
    session: ``CLIENT ID``, ``INFO server``, ``CLIENT TRACKING ON REDIRECT <own id> BCAST
    PREFIX <key_prefix>epoch:`` and ``SUBSCRIBE __redis__:invalidate``. Returns the client
    id and the server's run tag (None when ``INFO`` is refused: then no near copy can be
    trusted without a GET). The other refusals raise redis-py's ``ResponseError``; each
    step's name is appended to ``steps`` before it is sent, so a caller (``ccvault config
    check``) can name the refused one."""
    steps = [] if steps is None else steps
    steps.append("CLIENT ID")
    await connection.send_command("CLIENT", "ID")
    client_id = int(await connection.read_response())
    steps.append("INFO")
    await connection.send_command("INFO", "server")
    try:
        tag = _run_tag_of(await connection.read_response())
    except ResponseError:  # an ACL without +info
        tag = None
    steps.append("CLIENT TRACKING")
    await connection.send_command(
        "CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST", "PREFIX", f"{key_prefix}epoch:"
    )
    await connection.read_response()
    steps.append("SUBSCRIBE")
    await connection.send_command("SUBSCRIBE", _INVALIDATE_CHANNEL)
    await connection.read_response(disable_decoding=True)
    return client_id, tag


async def sync_invalidations(store: ProfileStore) -> None:
    """:meth:`CachedProfileStore.sync_invalidations` of every cache in the stack ``store``
    (the store ``open_store`` yields: encryption over the cache over the provider, or any
    wrappers with an ``inner`` store); a no-op when there is no cache. After it, a read
    through ``store`` sees every write completed (on any instance) before the call, in
    push mode too."""
    current: Any = store
    for _ in range(_MAX_WRAPPERS):
        if current is None:
            return
        if isinstance(current, CachedProfileStore):
            await current.sync_invalidations()
        current = getattr(current, "inner", None)


#: how deep sync_invalidations looks through wrappers (a guard against a cycle of inners)
_MAX_WRAPPERS = 32


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value
