"""The offline extractor (each type, honest confidences) and the OpenAI-compatible adapter
against a real HTTP server on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from uuid import uuid4

import pytest

from ccvault import errors
from ccvault.extraction import (
    Extraction,
    ExtractionError,
    ExtractionRequest,
    Extractor,
    OfflineExtractor,
    OpenAICompatibleExtractor,
)
from ccvault.models import (
    ConversationTurn,
    FieldValueType,
    ProfileFieldDefinition,
    ProfileFieldSource,
)
from ccvault_contract_tests import assert_not_quoted


def _turns(*pairs: tuple[str, str]) -> list[ConversationTurn]:
    return [ConversationTurn(role=role, content=content) for role, content in pairs]


def _user(*texts: str) -> list[ConversationTurn]:
    return [ConversationTurn(role="user", content=text) for text in texts]


def _req(name: str, kind: FieldValueType, **kw: Any) -> ExtractionRequest:
    return ExtractionRequest(field_name=name, value_type=kind, **kw)


offline = OfflineExtractor()


async def _extract(request: ExtractionRequest, turns: list[ConversationTurn]) -> Extraction | None:
    return await offline.extract(request, turns)


def test_both_extractors_satisfy_the_protocol() -> None:
    assert isinstance(OfflineExtractor(), Extractor)
    assert isinstance(OpenAICompatibleExtractor("http://127.0.0.1:9", "m"), Extractor)


def test_request_from_definition_and_keywords() -> None:
    definition = ProfileFieldDefinition(
        tenant_id=uuid4(),
        agent_id=uuid4(),
        name="shipping_country",
        display_name="Destination",
        allowed_values=["Germany"],
        extraction_prompt_hint="country name",
        extraction_examples=["ship to Germany"],
    )
    request = ExtractionRequest.for_field("shipping_country", definition)
    assert request.allowed_values == ("Germany",)
    assert request.hint == "country name" and request.examples == ("ship to Germany",)
    assert set(request.keywords()) == {"shipping country", "destination", "country"}
    bare = ExtractionRequest.for_field("age", value_type="number", description="years")
    assert bare.value_type is FieldValueType.NUMBER and bare.description == "years"
    with pytest.raises(errors.ValidationError):
        ExtractionRequest.for_field("age", value_type="xml")


# ---------------------------------------------------------------------------------------
# offline: each type
# ---------------------------------------------------------------------------------------


async def test_email_single_address_is_confident_and_normalised() -> None:
    found = await _extract(
        _req("email", FieldValueType.EMAIL), _user("Sure, it's Jane.Doe@Example.ORG.")
    )
    assert found is not None
    assert found.value == "Jane.Doe@example.org"
    assert found.confidence == 0.95
    assert found.quote == "Sure, it's Jane.Doe@Example.ORG."
    assert found.method == "offline:email"
    assert found.source is ProfileFieldSource.SYSTEM_INFERRED


async def test_email_ambiguity_lowers_confidence_unless_a_keyword_decides() -> None:
    request = _req("work_email", FieldValueType.EMAIL, display_name="work email")
    both = await _extract(request, _user("Try a@example.org or b@example.org"))
    assert both is not None and both.confidence == 0.45
    decided = await _extract(
        request, _user("Personal is a@example.org, my work email is b@example.org")
    )
    assert decided is not None and decided.value == "b@example.org"
    assert decided.confidence == 0.85


async def test_agent_turns_are_not_read_and_the_newest_user_turn_wins() -> None:
    request = _req("email", FieldValueType.EMAIL)
    turns = _turns(
        ("user", "old one: old@example.org"),
        ("user", "use new@example.org from now on"),
        ("assistant", "Shall I use support@shop.example.com?"),
    )
    found = await _extract(request, turns)
    assert found is not None and found.value == "new@example.org"
    assert await _extract(request, _turns(("assistant", "mail me@example.org"))) is None


async def test_phone_international_and_national_forms() -> None:
    request = _req("phone", FieldValueType.PHONE)
    found = await _extract(request, _user("Call me on +44 20 7946 0958 after six"))
    assert found is not None and found.value == "+442079460958" and found.confidence == 0.9
    # a national number is read only with a default region, and is less certain
    assert await _extract(request, _user("Call me on (415) 555-0123")) is None
    national = await OfflineExtractor(default_region="us").extract(
        request, _user("Call me on (415) 555-0123")
    )
    assert national is not None and national.value == "+14155550123"
    assert national.confidence == 0.7


@pytest.mark.parametrize(
    ("text", "value", "confidence"),
    [
        ("I was born on 1990-03-12.", "1990-03-12", 0.9),
        ("Born 12 March 1990", "1990-03-12", 0.85),
        ("March 12th, 1990 is my birthday", "1990-03-12", 0.85),
        ("born 25/12/1990", "1990-12-25", 0.7),
        ("born 12/25/1990", "1990-12-25", 0.7),
        ("born 03/04/1990", "1990-04-03", 0.4),  # day-first guess, honestly unsure
    ],
)
async def test_dates(text: str, value: str, confidence: float) -> None:
    found = await _extract(_req("date_of_birth", FieldValueType.DATE), _user(text))
    assert found is not None
    assert (found.value, found.confidence) == (value, confidence)


async def test_impossible_date_is_not_extracted() -> None:
    assert await _extract(_req("d", FieldValueType.DATE), _user("on 2023-02-30")) is None


async def test_several_dates_halve_the_confidence_without_a_keyword() -> None:
    request = _req("delivery_date", FieldValueType.DATE)
    found = await _extract(request, _user("between 2026-01-05 and 2026-01-09"))
    assert found is not None and found.confidence == 0.45
    keyed = await _extract(request, _user("ordered 2026-01-02, the delivery date is 2026-01-09"))
    assert keyed is not None and keyed.value == "2026-01-09" and keyed.confidence == 0.9


@pytest.mark.parametrize(
    ("turns", "value", "confidence"),
    [
        (_user("my order quantity is 3"), 3, 0.8),
        (_user("The quantity: 1,200 units"), 1200, 0.8),
        (_user("quantity 2.5 kg"), 2.5, 0.8),
        (_turns(("assistant", "What quantity?"), ("user", "12 please")), 12, 0.7),
        (_user("12 please"), 12, 0.35),  # a lone number with no context
    ],
)
async def test_numbers(turns: list[ConversationTurn], value: float, confidence: float) -> None:
    found = await _extract(_req("order_quantity", FieldValueType.NUMBER), turns)
    assert found is not None
    assert found.value == value and type(found.value) is type(value)
    assert found.confidence == confidence


async def test_numbers_without_context_and_several_are_not_guessed() -> None:
    request = _req("order_quantity", FieldValueType.NUMBER)
    assert await _extract(request, _user("I have 2 kids and 3 dogs")) is None
    assert await _extract(request, _user("no numbers here")) is None


@pytest.mark.parametrize(
    ("turns", "value", "confidence"),
    [
        (_turns(("assistant", "Would you like gift wrap?"), ("user", "Yes please")), True, 0.85),
        (_turns(("assistant", "Would you like gift wrap?"), ("user", "no thanks")), False, 0.85),
        (_user("Please add gift wrap."), True, 0.6),
        (_user("A quantity of 3. No gift wrap."), False, 0.6),
        (_user("I don't need gift wrap"), False, 0.6),
    ],
)
async def test_booleans(turns: list[ConversationTurn], value: bool, confidence: float) -> None:
    found = await _extract(_req("gift_wrap", FieldValueType.BOOLEAN), turns)
    assert found is not None
    assert found.value is value and found.confidence == confidence


async def test_yes_without_a_question_about_the_field_is_not_an_answer() -> None:
    turns = _turns(("assistant", "Is that all?"), ("user", "yes"))
    assert await _extract(_req("gift_wrap", FieldValueType.BOOLEAN), turns) is None


async def test_allowed_values() -> None:
    request = _req(
        "shipping_country",
        FieldValueType.STRING,
        allowed_values=("Germany", "France", "United Kingdom"),
    )
    one = await _extract(request, _user("Ship it to the united kingdom please"))
    assert one is not None and one.value == "United Kingdom" and one.confidence == 0.9
    several = await _extract(request, _user("France or Germany, not sure"))
    assert several is not None and several.confidence == 0.4
    negated = await _extract(request, _user("Not Germany."))
    assert negated is not None and negated.confidence == 0.3
    assert await _extract(request, _user("Ship to Italy")) is None
    # the whole word only
    assert await _extract(request, _user("Germanyland is lovely")) is None


async def test_strings_by_keyword_and_short_replies() -> None:
    request = _req("full_name", FieldValueType.STRING, display_name="full name")
    stated = await _extract(request, _user("Hi, my name is Jane Doe and I need help"))
    assert stated is not None and stated.value == "Jane Doe" and stated.confidence == 0.75
    reply = await _extract(
        request, _turns(("assistant", "What is your full name?"), ("user", "Jane Doe."))
    )
    assert reply is not None and reply.value == "Jane Doe" and reply.confidence == 0.55
    assert await _extract(request, _user("I need help with my order")) is None


async def test_json_is_never_guessed() -> None:
    assert await _extract(_req("prefs", FieldValueType.JSON), _user('{"a": 1}')) is None


def test_extraction_refuses_bad_confidence_and_non_json() -> None:
    with pytest.raises(errors.ValidationError):
        Extraction(value=1, confidence=1.5, quote="", method="x")
    with pytest.raises(ValueError):
        Extraction(value=float("nan"), confidence=0.5, quote="", method="x")


# ---------------------------------------------------------------------------------------
# the OpenAI-compatible adapter, against a real server on loopback
# ---------------------------------------------------------------------------------------


@dataclass
class FakeLLM:
    """What the loopback server answers, and what it received."""

    url: str
    status: int = 200
    content: str = '{"found": false}'
    raw_body: bytes | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    state = FakeLLM(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            state.requests.append({"path": self.path, "body": body})
            state.headers.append(dict(self.headers))
            payload = state.raw_body
            if payload is None:
                payload = json.dumps(
                    {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": state.content},
                                "finish_reason": "stop",
                            }
                        ],
                    }
                ).encode()
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


CONVERSATION = _turns(
    ("assistant", "When were you born?"),
    ("user", "I was born on the twelfth of March, 1990."),
)
DOB = _req("date_of_birth", FieldValueType.DATE, display_name="date of birth", hint="birthday")


async def test_adapter_sends_a_chat_completion_and_reads_the_answer(llm: FakeLLM) -> None:
    llm.content = json.dumps(
        {
            "found": True,
            "value": "1990-03-12",
            "confidence": 0.92,
            "quote": "born on the twelfth of March, 1990",
        }
    )
    async with OpenAICompatibleExtractor(llm.url, "tiny-model", api_key="sk-test") as extractor:
        found = await extractor.extract(DOB, CONVERSATION)
    assert found is not None
    assert found.value == "1990-03-12" and found.confidence == 0.92
    assert found.quote == "born on the twelfth of March, 1990"
    assert found.method == "llm:tiny-model"
    assert found.source is ProfileFieldSource.LLM_EXTRACTED
    (request,) = llm.requests
    assert request["path"] == "/v1/chat/completions"
    body = request["body"]
    assert body["model"] == "tiny-model" and body["temperature"] == 0
    assert body["response_format"] == {"type": "json_object"}
    assert body["messages"][0]["role"] == "system"
    prompt = body["messages"][1]["content"]
    assert "date_of_birth" in prompt and "YYYY-MM-DD" in prompt and "birthday" in prompt
    assert '{"speaker": "customer", "text": "I was born on the twelfth of March, 1990."}' in prompt
    assert llm.headers[0]["Authorization"] == "Bearer sk-test"


async def test_adapter_caps_confidence_when_the_quote_was_never_said(llm: FakeLLM) -> None:
    llm.content = json.dumps(
        {"found": True, "value": "1990-03-12", "confidence": 0.99, "quote": "I am 35"}
    )
    async with OpenAICompatibleExtractor(llm.url, "m") as extractor:
        found = await extractor.extract(DOB, CONVERSATION)
    assert found is not None and found.confidence == 0.3
    assert "Authorization" not in llm.headers[0]


async def test_adapter_accepts_fenced_json_and_not_found(llm: FakeLLM) -> None:
    async with OpenAICompatibleExtractor(llm.url, "m") as extractor:
        assert await extractor.extract(DOB, CONVERSATION) is None
        llm.content = (
            '```json\n{"found": true, "value": "1990-03-12", "confidence": 0.8, '
            '"quote": "twelfth of March"}\n```'
        )
        found = await extractor.extract(DOB, CONVERSATION)
        assert found is not None and found.confidence == 0.8
        assert await extractor.extract(DOB, []) is None
    assert len(llm.requests) == 2  # no request without a conversation


@pytest.mark.parametrize(
    ("status", "content", "raw", "match"),
    [
        (500, "", b'{"error": "boom"}', "HTTP 500"),
        (200, "not json at all", None, "unreadable"),
        (200, "[1, 2]", None, "unreadable"),
        (200, "", b"<html>", "unreadable"),
        (200, '{"found": true, "value": 1, "confidence": "high"}', None, "unreadable"),
    ],
)
async def test_adapter_failures_raise_extraction_error(
    llm: FakeLLM, status: int, content: str, raw: bytes | None, match: str
) -> None:
    llm.status, llm.content, llm.raw_body = status, content, raw
    async with OpenAICompatibleExtractor(llm.url, "m") as extractor:
        with pytest.raises(ExtractionError, match=match):
            await extractor.extract(DOB, CONVERSATION)


@pytest.mark.parametrize(
    "content",
    [
        '{"found": true, "value": 1, "confidence": "Ana Lopez, 12 March 1990"}',
        "Ana Lopez, 12 March 1990 (not JSON)",
    ],
)
async def test_an_unreadable_answer_is_neither_quoted_nor_chained(
    llm: FakeLLM, content: str
) -> None:
    # the model's answer may quote the customer: float()'s and the decoder's errors quote it
    llm.content = content
    async with OpenAICompatibleExtractor(llm.url, "m") as extractor:
        with pytest.raises(ExtractionError, match="unreadable") as raised:
            await extractor.extract(DOB, CONVERSATION)
    assert_not_quoted(raised.value, "Ana Lopez")


async def test_adapter_unreachable_endpoint_raises_extraction_error(llm: FakeLLM) -> None:
    # a port nobody listens on: take one from a server we just closed
    probe = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = probe.server_address[1]
    probe.server_close()
    async with OpenAICompatibleExtractor(
        f"http://127.0.0.1:{port}", "m", timeout_seconds=5
    ) as extractor:
        with pytest.raises(ExtractionError, match="failed"):
            await extractor.extract(DOB, CONVERSATION)


async def test_parts_of_dates_and_times_are_not_numbers() -> None:
    request = _req("order_quantity", FieldValueType.NUMBER)
    asked = ("assistant", "What quantity?")
    assert await _extract(request, _turns(asked, ("user", "deliver on 2026-12-18"))) is None
    assert await _extract(request, _turns(asked, ("user", "at 10:30 on 12/03"))) is None
    # the date's parts do not count, so 5 is the one number of the answer
    found = await _extract(request, _turns(asked, ("user", "5, delivered 2026-12-18")))
    assert found is not None and found.value == 5 and found.confidence == 0.7
