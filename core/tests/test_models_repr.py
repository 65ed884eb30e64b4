"""Personal data never shows in a model's ``repr()`` or ``str()`` (issue 12: "never in logs,
exception messages, metric labels or repr"), while ``model_dump`` keeps it.

Each case builds a model carrying a unique marker in one personal field, and the profile
case nests them all: a model printed in a log line or a traceback must not reveal it.
"""

from __future__ import annotations

from collections.abc import Callable
from uuid import uuid4

import pytest

from ccvault.models import (
    ChannelIdentity,
    Consent,
    ConversationTurn,
    CustomerProfile,
    GapFillResult,
    LineageEntry,
    MergeIdentityMove,
    ProfileAsset,
    ProfileField,
    Session,
    VaultModel,
)

MARK = "ana.marker@example.com"
IP = "203.0.113.77"


def _field() -> ProfileField:
    return ProfileField(name="email", value=MARK, source_metadata={"quote": MARK})


def _asset() -> ProfileAsset:
    return ProfileAsset(
        name="passport",
        asset_type="id_document",
        storage_provider="s3",
        storage_path=f"s3://bucket/{MARK}.pdf",
        verification_result={"holder": MARK},
    )


def _profile() -> CustomerProfile:
    return CustomerProfile(
        tenant_id=uuid4(),
        channel_identities=[ChannelIdentity(channel="email", channel_user_id=MARK)],
        fields={"email": _field()},
        assets=[_asset()],
        consents=[Consent(consent_type="marketing", granted=True, ip_address=IP)],
    )


CASES: dict[str, tuple[Callable[[], VaultModel], str]] = {
    "channel_identity": (lambda: ChannelIdentity(channel="email", channel_user_id=MARK), MARK),
    "consent_ip": (lambda: Consent(consent_type="marketing", granted=True, ip_address=IP), IP),
    "field_value_and_metadata": (_field, MARK),
    "asset_path_and_result": (_asset, MARK),
    "lineage_metadata": (
        lambda: LineageEntry(
            id=uuid4(), type="profile_field", name="email", source_metadata={"q": MARK}
        ),
        MARK,
    ),
    "conversation_turn": (lambda: ConversationTurn(content=f"my mail is {MARK}"), MARK),
    "session_variables": (
        lambda: Session(
            tenant_id=uuid4(),
            agent_id=uuid4(),
            customer_profile_id=uuid4(),
            variables={"email": MARK},
            turns=[ConversationTurn(content=MARK)],
        ),
        MARK,
    ),
    "gap_fill_result": (
        lambda: GapFillResult(field_name="email", value=MARK, extraction_quote=MARK),
        MARK,
    ),
    "merge_identity_move": (
        lambda: MergeIdentityMove(
            channel="email",
            channel_user_id=MARK,
            from_source=True,
            primary_before=False,
            primary_after=False,
        ),
        MARK,
    ),
    "whole_profile": (_profile, MARK),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_repr_and_str_redact_personal_data(case: str) -> None:
    build, marker = CASES[case]
    model = build()
    assert marker in model.model_dump_json()  # the marker is really there
    for shown in (repr(model), str(model), f"{model!r}", f"{model}"):
        assert marker not in shown
        assert "<redacted>" in shown


def test_ip_of_a_profile_consent_is_redacted_too() -> None:
    shown = repr(_profile())
    assert IP not in shown
    assert "email" in shown  # names and structure stay readable
