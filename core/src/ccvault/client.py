"""A remote vault: :class:`RemoteProfileStore`, a ``ProfileStore`` over the HTTP API of
``ccvault serve``, so code can switch between an embedded store and a remote one::

    async with RemoteProfileStore("http://127.0.0.1:8080", api_key="ccv_...") as store:
        profile = await store.get_or_create(tenant_id, Channel.WHATSAPP, "+4915112345678")

It is a real :class:`~ccvault.store.ProfileStore`: the public methods check their arguments
and apply the vault's rules locally, exactly as for an embedded store, and the provider hooks
call the server. The tenant of every call is the API key's: a client holding one key refuses
calls for another tenant (:class:`WrongTenantError`); ``key_for_tenant`` gives it a key per
tenant instead. HTTP errors come back as the vault's own errors (404 -> ``NotFoundError``,
409 -> ``ConflictError`` subclasses, 400/422 -> ``ValidationError``, 503 or an unreachable
server -> ``ProviderUnavailableError``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from ccvault import errors
from ccvault.batches import KeysetBatch
from ccvault.extras import requires_extra
from ccvault.models import (
    Channel,
    ChannelIdentity,
    CustomerProfile,
    ItemStatus,
    ItemType,
    LineageEntry,
    ProfileAsset,
    ProfileField,
    ProfileFieldDefinition,
    ScenarioFieldRequirement,
)
from ccvault.store import MergeWinner, ProfileStore, StoreRules

with requires_extra("client", "The remote client (ccvault.client)"):
    import httpx

__all__ = ["RemoteAuthError", "RemoteProfileStore", "WrongTenantError"]

_ANY = "any"


class RemoteAuthError(errors.VaultError):
    """The server refused the API key (401) or its scopes (403)."""


class WrongTenantError(RemoteAuthError):
    """The call names a tenant this client holds no key for."""


_CONFLICTS: dict[str, type[errors.ConflictError]] = {
    "identity_conflict": errors.IdentityConflictError,
    "active_field_conflict": errors.ActiveFieldConflictError,
    "has_dependents": errors.DependentsError,
}


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    body: Any = None
    try:
        body = response.json()
        code, message = str(body.get("code", "")), str(body.get("message", ""))
        details = body.get("details") or []
    except (ValueError, AttributeError):
        code, message, details = "", response.reason_phrase, []
    status = response.status_code
    if status == 404:
        raise errors.NotFoundError(message or "not found")
    if status == 409:
        ids = [str(item) for item in body.get("ids") or []] if isinstance(body, dict) else []
        suffix = f" ({', '.join(ids)})" if ids else ""
        raise _CONFLICTS.get(code, errors.ConflictError)(f"{message}{suffix}")
    if code == "schema_validation_failed":
        field = str(details[0]["loc"][0]) if details and details[0].get("loc") else "value"
        kinds = [str(d.get("type", "invalid")) for d in details]
        raise errors.SchemaValidationError(field, [message], kinds)
    if status in (400, 413, 422):
        where = sorted({".".join(str(p) for p in d.get("loc", [])) for d in details})
        suffix = f" ({', '.join(where)})" if where else ""
        raise errors.ValidationError(f"{message}{suffix}")
    if status in (401, 403):
        raise RemoteAuthError(f"{status} {code}: {message}")
    if status == 503:
        raise errors.ProviderUnavailableError(message or "server unavailable")
    if status == 501:
        raise NotImplementedError(message or "not implemented by the server")
    raise errors.StorageError(f"server error {status} {code}")


def _vault_model(name: str) -> Any:
    """A model of :mod:`ccvault.models` by name (the merge log's models are newer than some
    installations of this client)."""
    import ccvault.models

    return getattr(ccvault.models, name)


class RemoteProfileStore(ProfileStore):
    """A ``ProfileStore`` whose storage is a ``ccvault serve`` server.

    ``api_key``: one key (its tenant is learned from the server on first use);
    ``key_for_tenant``: a key per tenant (called once per tenant, the result kept).
    ``rules`` apply locally (missing-field evaluation, chain depth up to the server's).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        key_for_tenant: Callable[[UUID], str] | Mapping[UUID, str] | None = None,
        timeout: float = 30.0,
        rules: StoreRules | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(rules=rules)
        if api_key is None and key_for_tenant is None:
            raise errors.ConfigurationError("RemoteProfileStore needs api_key or key_for_tenant")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._api_key_tenant: UUID | None = None
        self._key_for_tenant = key_for_tenant
        self._tokens: dict[UUID, str] = {}
        self._timeout = timeout
        self._transport = transport
        self._http: httpx.AsyncClient | None = None

    # ---------------------------------------------------------------------------------
    # plumbing
    # ---------------------------------------------------------------------------------

    async def setup(self) -> None:
        self._client()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=self.base_url,
                timeout=self._timeout,
                transport=self._transport,
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
            )
        return self._http

    async def _token(self, tenant_id: UUID) -> str:
        if tenant_id in self._tokens:
            return self._tokens[tenant_id]
        if self._key_for_tenant is not None:
            source = self._key_for_tenant
            token = source[tenant_id] if isinstance(source, Mapping) else source(tenant_id)
            self._tokens[tenant_id] = token
            return token
        assert self._api_key is not None
        if self._api_key_tenant is None:
            info = await self._send("GET", "/v1/key", self._api_key)
            self._api_key_tenant = UUID(info["tenant_id"])
        if tenant_id != self._api_key_tenant:
            raise WrongTenantError("this client's API key belongs to another tenant")
        self._tokens[tenant_id] = self._api_key
        return self._api_key

    async def _send(
        self,
        method: str,
        path: str,
        token: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        headers = {"Authorization": f"Bearer {token}"}
        if "now" in vars(self):
            # a clock set on this instance (tests freeze it) travels with the call; only a
            # server started with --trust-client-clock (testing only) honours it
            headers["X-Ccvault-Clock"] = self.now().isoformat()
        query = {k: v for k, v in (params or {}).items() if v is not None}
        # a read is retried once on a connection the server closed meanwhile (keep-alive
        # race); a write is not: it may have been applied
        attempts = 2 if method == "GET" else 1
        for attempt in range(attempts):
            try:
                response = await self._client().request(
                    method, path, json=json, params=query, headers=headers
                )
                break
            except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                if attempt + 1 < attempts:
                    continue
                raise errors.ProviderUnavailableError(
                    f"cannot reach the vault server ({type(exc).__name__})"
                ) from None
            except httpx.TransportError as exc:
                raise errors.ProviderUnavailableError(
                    f"cannot reach the vault server ({type(exc).__name__})"
                ) from None
        _raise_for(response)
        return response.json()

    async def _call(
        self,
        tenant_id: UUID,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        return await self._send(
            method, path, await self._token(tenant_id), json=json, params=params
        )

    async def _maybe(
        self, tenant_id: UUID, path: str, params: Mapping[str, Any] | None = None
    ) -> Any | None:
        """GET, with 404 as None."""
        try:
            return await self._call(tenant_id, "GET", path, params=params)
        except errors.NotFoundError:
            return None

    @staticmethod
    def _profile(data: Any | None) -> CustomerProfile | None:
        return None if data is None else CustomerProfile.model_validate(data)

    @staticmethod
    def _dump(model: Any) -> Any:
        return model.model_dump(mode="json")

    # ---------------------------------------------------------------------------------
    # hooks: profiles
    # ---------------------------------------------------------------------------------

    async def _get_by_customer_id(
        self, tenant_id: UUID, customer_id: UUID, include_history: bool
    ) -> CustomerProfile | None:
        return self._profile(
            await self._maybe(
                tenant_id,
                f"/v1/profiles/by-customer/{customer_id}",
                {"include_history": include_history, "as_stored": True},
            )
        )

    async def _get_by_id(
        self, tenant_id: UUID, profile_id: UUID, include_history: bool
    ) -> CustomerProfile | None:
        return self._profile(
            await self._maybe(
                tenant_id,
                f"/v1/profiles/{profile_id}",
                {"include_history": include_history, "as_stored": True},
            )
        )

    async def _get_by_channel_identity(
        self, tenant_id: UUID, channel: Channel, channel_user_id: str, include_history: bool
    ) -> CustomerProfile | None:
        body = {
            "channel": channel.value,
            "channel_user_id": channel_user_id,
            "include_history": include_history,
            "as_stored": True,
        }
        try:
            data = await self._call(tenant_id, "POST", "/v1/profiles/lookup", json=body)
        except errors.NotFoundError:
            return None
        return self._profile(data)

    async def _get_or_create(self, tenant_id: UUID, candidate: CustomerProfile) -> CustomerProfile:
        identity = candidate.channel_identities[0]
        body = {"channel": identity.channel.value, "channel_user_id": identity.channel_user_id}
        data = await self._call(tenant_id, "POST", "/v1/profiles/get-or-create", json=body)
        return CustomerProfile.model_validate(data)

    async def _save(self, profile: CustomerProfile) -> UUID:
        data = await self._call(profile.tenant_id, "PUT", "/v1/profiles", json=self._dump(profile))
        return UUID(data["id"])

    async def _delete(self, tenant_id: UUID, profile_id: UUID) -> bool:
        data = await self._call(tenant_id, "DELETE", f"/v1/profiles/{profile_id}")
        return bool(data["deleted"])

    # ---------------------------------------------------------------------------------
    # hooks: fields and assets
    # ---------------------------------------------------------------------------------

    async def _update_field(
        self, tenant_id: UUID, profile_id: UUID, field: ProfileField, supersede_existing: bool
    ) -> UUID:
        data = await self._call(
            tenant_id,
            "POST",
            f"/v1/profiles/{profile_id}/fields",
            json=self._dump(field),
            params={"supersede_existing": str(supersede_existing).lower()},
        )
        return UUID(data["id"])

    async def _get_field(
        self, tenant_id: UUID, profile_id: UUID, field_name: str, status: ItemStatus | None
    ) -> ProfileField | None:
        data = await self._maybe(
            tenant_id,
            f"/v1/profiles/{profile_id}/fields/{field_name}",
            {"status": status.value if status is not None else _ANY, "as_stored": True},
        )
        return None if data is None else ProfileField.model_validate(data)

    async def _get_field_history(
        self, tenant_id: UUID, profile_id: UUID, field_name: str
    ) -> list[ProfileField]:
        data = await self._call(
            tenant_id,
            "GET",
            f"/v1/profiles/{profile_id}/fields/{field_name}/history",
            params={"as_stored": True},
        )
        return [ProfileField.model_validate(item) for item in data]

    async def _expire_stale_fields(
        self, tenant_id: UUID, profile_id: UUID | None, now: datetime
    ) -> int:
        body = {"profile_id": str(profile_id) if profile_id else None}
        data = await self._call(tenant_id, "POST", "/v1/operations/expire-stale", json=body)
        return int(data["count"])

    async def _expire_stale_fields_batch(
        self, tenant_id: UUID, profile_id: UUID | None, now: datetime, limit: int
    ) -> int:
        # one batch, one transaction on the server: the loop (and its progress) runs here
        body = {"profile_id": str(profile_id) if profile_id else None, "limit": limit}
        data = await self._call(tenant_id, "POST", "/v1/operations/expire-stale", json=body)
        return int(data["count"])

    async def _add_asset(
        self, tenant_id: UUID, profile_id: UUID, asset: ProfileAsset, supersede_existing: bool
    ) -> UUID:
        data = await self._call(
            tenant_id,
            "POST",
            f"/v1/profiles/{profile_id}/assets",
            json=self._dump(asset),
            params={"supersede_existing": str(supersede_existing).lower()},
        )
        return UUID(data["id"])

    async def _get_asset(
        self, tenant_id: UUID, profile_id: UUID, asset_id: UUID
    ) -> ProfileAsset | None:
        data = await self._maybe(tenant_id, f"/v1/profiles/{profile_id}/assets/{asset_id}")
        return None if data is None else ProfileAsset.model_validate(data)

    async def _get_asset_by_name(
        self, tenant_id: UUID, profile_id: UUID, asset_name: str, status: ItemStatus | None
    ) -> ProfileAsset | None:
        data = await self._maybe(
            tenant_id,
            f"/v1/profiles/{profile_id}/assets/by-name/{asset_name}",
            {"status": status.value if status is not None else _ANY},
        )
        return None if data is None else ProfileAsset.model_validate(data)

    # ---------------------------------------------------------------------------------
    # hooks: lineage, channels, merge
    # ---------------------------------------------------------------------------------

    async def _get_derivation_chain(
        self, tenant_id: UUID, item_id: UUID, item_type: ItemType, max_depth: int
    ) -> list[LineageEntry]:
        data = await self._call(tenant_id, "GET", f"/v1/lineage/{item_type.value}/{item_id}/chain")
        return [LineageEntry.model_validate(entry) for entry in data][-max_depth:]

    async def _get_derived_items(
        self, tenant_id: UUID, source_item_id: UUID
    ) -> tuple[list[ProfileField], list[ProfileAsset]]:
        data = await self._call(
            tenant_id, "GET", f"/v1/lineage/{source_item_id}/derived", params={"as_stored": True}
        )
        return (
            [ProfileField.model_validate(item) for item in data["fields"]],
            [ProfileAsset.model_validate(item) for item in data["assets"]],
        )

    async def _check_has_dependents(self, tenant_id: UUID, item_id: UUID) -> bool:
        data = await self._call(tenant_id, "GET", f"/v1/lineage/{item_id}/has-dependents")
        return bool(data["has_dependents"])

    async def _link_channel(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        identity: ChannelIdentity,
        *,
        max_per_channel: int | None = None,
    ) -> bool:
        body = self._dump(identity)
        if max_per_channel is not None:
            body["max_per_channel"] = max_per_channel
        data = await self._call(tenant_id, "POST", f"/v1/profiles/{profile_id}/channels", json=body)
        return bool(data["linked"])

    async def _merge_profiles(
        self,
        tenant_id: UUID,
        source_profile_id: UUID,
        target_profile_id: UUID,
        choose_winner: MergeWinner,
        *log_request: Any,
    ) -> None:
        # the server applies the vault's merge rule (and the tenant's survivorship
        # policies) itself; ``choose_winner`` is the local copy of that decision, unused
        body: dict[str, Any] = {
            "source_profile_id": str(source_profile_id),
            "target_profile_id": str(target_profile_id),
        }
        # the merge-log request of newer stores (merge id, reason, actor) travels along
        for name in ("merge_id", "reason", "actor"):
            value = getattr(log_request[0], name, None) if log_request else None
            if value is not None:
                body[name] = str(value)
        await self._call(tenant_id, "POST", "/v1/profiles/merge", json=body)

    async def _get_tenant_field_definitions(self, tenant_id: UUID) -> list[ProfileFieldDefinition]:
        """Nothing: the public ``merge_profiles`` reads the tenant's survivorship policies
        to build its local chooser, which this client does not use (the server decides)."""
        return []

    async def _get_merge_log(self, tenant_id: UUID, profile_id: UUID) -> list[Any]:
        data = await self._call(tenant_id, "GET", f"/v1/profiles/{profile_id}/merges")
        record = _vault_model("MergeRecord")
        return [record.model_validate(item) for item in data]

    async def _unmerge(self, tenant_id: UUID, merge_id: UUID) -> Any:
        data = await self._call(tenant_id, "POST", f"/v1/merges/{merge_id}/unmerge")
        return _vault_model("UnmergeResult").model_validate(data)

    # ---------------------------------------------------------------------------------
    # hooks: definitions and requirements
    # ---------------------------------------------------------------------------------

    async def _get_field_definitions(
        self, tenant_id: UUID, agent_id: UUID, enabled_only: bool
    ) -> list[ProfileFieldDefinition]:
        data = await self._call(
            tenant_id,
            "GET",
            f"/v1/agents/{agent_id}/definitions",
            params={"enabled_only": str(enabled_only).lower()},
        )
        return [ProfileFieldDefinition.model_validate(item) for item in data]

    async def _get_field_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> ProfileFieldDefinition | None:
        data = await self._maybe(tenant_id, f"/v1/agents/{agent_id}/definitions/{field_name}")
        return None if data is None else ProfileFieldDefinition.model_validate(data)

    async def _save_field_definition(self, definition: ProfileFieldDefinition) -> UUID:
        data = await self._call(
            definition.tenant_id, "PUT", "/v1/definitions", json=self._dump(definition)
        )
        return UUID(data["id"])

    async def _delete_field_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> bool:
        data = await self._call(
            tenant_id, "DELETE", f"/v1/agents/{agent_id}/definitions/{field_name}"
        )
        return bool(data["deleted"])

    async def _get_scenario_requirements(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> list[ScenarioFieldRequirement]:
        data = await self._call(
            tenant_id,
            "GET",
            f"/v1/scenarios/{scenario_id}/requirements",
            params={"step_id": str(step_id) if step_id else None},
        )
        return [ScenarioFieldRequirement.model_validate(item) for item in data]

    async def _save_scenario_requirement(self, requirement: ScenarioFieldRequirement) -> UUID:
        data = await self._call(
            requirement.tenant_id, "PUT", "/v1/requirements", json=self._dump(requirement)
        )
        return UUID(data["id"])

    async def _delete_scenario_requirements(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> int:
        data = await self._call(
            tenant_id,
            "DELETE",
            f"/v1/scenarios/{scenario_id}/requirements",
            params={"step_id": str(step_id) if step_id else None},
        )
        return int(data["count"])

    # ---------------------------------------------------------------------------------
    # hooks: privacy and operations
    # ---------------------------------------------------------------------------------

    async def _purge_profile(self, tenant_id: UUID, profile_id: UUID) -> bool:
        data = await self._call(tenant_id, "POST", f"/v1/profiles/{profile_id}/purge")
        return bool(data["deleted"])

    async def _export_profile(self, tenant_id: UUID, profile_id: UUID) -> CustomerProfile | None:
        data = await self._maybe(
            tenant_id, f"/v1/profiles/{profile_id}/export", {"as_stored": True}
        )
        return None if data is None else CustomerProfile.model_validate(data["profile"])

    async def _find_subject_profiles(
        self,
        tenant_id: UUID,
        channel: Channel | None,
        channel_user_id: str | None,
        customer_id: UUID | None,
    ) -> list[UUID]:
        # the identity travels in the body, never in a URL
        body = {
            "channel": None if channel is None else channel.value,
            "channel_user_id": channel_user_id,
            "customer_id": None if customer_id is None else str(customer_id),
        }
        data = await self._call(tenant_id, "POST", "/v1/subjects/profiles", json=body)
        return [UUID(item) for item in data]

    async def _erase_subject(
        self, tenant_id: UUID, profile_ids: list[UUID], merge_ids: list[UUID]
    ) -> int:
        body = {
            "profile_ids": [str(p) for p in profile_ids],
            "merge_ids": [str(m) for m in merge_ids],
        }
        data = await self._call(tenant_id, "POST", "/v1/subjects/erase-profiles", json=body)
        return int(data["erased"])

    async def _delete_item(self, tenant_id: UUID, item_id: UUID, item_type: ItemType) -> bool:
        data = await self._call(tenant_id, "DELETE", f"/v1/items/{item_type.value}/{item_id}")
        return bool(data["deleted"])

    async def _mark_orphans(self, tenant_id: UUID) -> int:
        data = await self._call(tenant_id, "POST", "/v1/operations/mark-orphans")
        return int(data["count"])

    async def _mark_orphans_batch(self, tenant_id: UUID, now: datetime, limit: int) -> int:
        data = await self._call(
            tenant_id, "POST", "/v1/operations/mark-orphans", params={"limit": limit}
        )
        return int(data["count"])

    async def _mark_orphans_page(
        self, tenant_id: UUID, now: datetime, limit: int, after: str | None
    ) -> KeysetBatch:
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        data = await self._call(
            tenant_id, "POST", "/v1/operations/mark-orphans/page", params=params
        )
        examined, resume = data["examined"], data["resume_after"]
        return KeysetBatch(
            marked=int(data["marked"]),
            examined=None if examined is None else int(examined),
            resume_after=None if resume is None else str(resume),
        )

    async def _list_tenant_ids(self) -> list[UUID]:
        """The tenants this client holds keys for that hold a profile (a key sees only its
        own tenant)."""
        tenants: set[UUID] = set()
        if self._api_key is not None and self._api_key_tenant is None:
            info = await self._send("GET", "/v1/key", self._api_key)
            self._api_key_tenant = UUID(info["tenant_id"])
            self._tokens.setdefault(self._api_key_tenant, self._api_key)
        for tenant_id in list(self._tokens):
            data = await self._call(tenant_id, "GET", "/v1/operations/tenants")
            tenants.update(UUID(item) for item in data)
        return sorted(tenants)

    async def _count_items_by_status(self, tenant_id: UUID) -> dict[str, dict[str, int]]:
        data = await self._call(tenant_id, "GET", "/v1/operations/counts")
        return {kind: {k: int(v) for k, v in counts.items()} for kind, counts in data.items()}

    async def _list_profile_ids(self, tenant_id: UUID) -> list[UUID]:
        data = await self._call(tenant_id, "GET", "/v1/operations/profile-ids")
        return [UUID(item) for item in data]

    async def _rewrite_field_payloads(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        payloads: dict[UUID, tuple[Any, dict[str, Any]]],
    ) -> int:
        body = {
            "payloads": [
                {"field_id": str(field_id), "value": value, "source_metadata": metadata}
                for field_id, (value, metadata) in payloads.items()
            ]
        }
        data = await self._call(
            tenant_id, "POST", f"/v1/profiles/{profile_id}/rewrite-payloads", json=body
        )
        return int(data["count"])
