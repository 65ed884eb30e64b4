"""Bounded work on customer text (issue 12) and what the offline extractor learned for
categorical slots, dates, times and numbers written as words (issue 15).

No timing assertion: the work is measured by the extractor's own scan counter
(``OfflineExtractor.scanned_chars``, the characters its pattern scans read), which must grow
linearly with the text whatever the number of candidates in it.
"""

from __future__ import annotations

from datetime import date
from uuid import uuid4

import pytest

import ccvault
from ccvault import errors
from ccvault.extraction import (
    Extraction,
    ExtractionLimits,
    ExtractionRequest,
    OfflineExtractor,
    OpenAICompatibleExtractor,
    extractor_from_settings,
)
from ccvault.gapfill import GapFillService
from ccvault.models import Channel, ConversationTurn, FieldValueType, Session
from ccvault_inmemory import InMemoryProfileStore

BIG = ExtractionLimits(max_message_chars=1_000_000, max_conversation_chars=1_000_000)
TODAY = date(2019, 3, 1)  # a Friday


def _user(*texts: str) -> list[ConversationTurn]:
    return [ConversationTurn(role="user", content=text) for text in texts]


def _turns(*pairs: tuple[str, str]) -> list[ConversationTurn]:
    return [ConversationTurn(role=role, content=content) for role, content in pairs]


async def _one(request: ExtractionRequest, turns: list[ConversationTurn]) -> Extraction | None:
    return await OfflineExtractor(today=TODAY).extract(request, turns)


# ---------------------------------------------------------------------------------------
# limits
# ---------------------------------------------------------------------------------------


async def test_an_oversized_message_is_refused_without_quoting_it() -> None:
    extractor = OfflineExtractor(limits=ExtractionLimits(max_message_chars=100))
    secret = "ana@example.com " * 10
    with pytest.raises(errors.ValidationError) as caught:
        await extractor.extract(ExtractionRequest(field_name="email"), _user("hi", secret))
    message = str(caught.value)
    assert "conversation turn 1 has 160 characters; the limit is 100" in message
    assert "max_message_chars" in message and "ana@" not in message
    assert extractor.scanned_chars == 0  # refused before any work


async def test_an_oversized_conversation_is_refused() -> None:
    extractor = OfflineExtractor(limits=ExtractionLimits(max_conversation_chars=50))
    with pytest.raises(errors.ValidationError, match="max_conversation_chars"):
        await extractor.extract(ExtractionRequest(field_name="city"), _user("a" * 30, "b" * 30))


def test_limits_come_from_the_settings_and_are_checked() -> None:
    settings = ccvault.load_settings(
        None, extraction={"max_message_chars": 123, "max_conversation_chars": 456}
    )
    assert ExtractionLimits.from_settings(settings) == ExtractionLimits(123, 456)
    offline = extractor_from_settings(settings)
    assert isinstance(offline, OfflineExtractor) and offline.limits.max_message_chars == 123
    with pytest.raises(errors.ConfigurationError):
        ExtractionLimits(max_message_chars=0)
    with pytest.raises(errors.ConfigurationError):
        ccvault.load_settings(None, extraction={"max_message_chars": 0})


async def test_openai_adapter_refuses_before_any_request() -> None:
    settings = ccvault.load_settings(
        None,
        extraction={
            "max_message_chars": 10,
            "openai": {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key": "sk-x"},
        },
    )
    adapter = extractor_from_settings(settings, name="openai")
    assert isinstance(adapter, OpenAICompatibleExtractor)
    assert "sk-x" not in repr(settings)
    try:
        # port 9 is closed: reaching the network would raise ExtractionError instead
        with pytest.raises(errors.ValidationError, match="max_message_chars"):
            await adapter.extract(ExtractionRequest(field_name="city"), _user("x" * 11))
    finally:
        await adapter.aclose()
    with pytest.raises(errors.ConfigurationError, match="base_url"):
        extractor_from_settings(ccvault.load_settings(None), name="openai")


async def test_gap_fill_passes_the_refusal_on() -> None:
    store = InMemoryProfileStore()
    tenant, agent = uuid4(), uuid4()
    profile = await store.get_or_create(tenant, Channel.WEB, "visitor-1")
    session = Session(
        tenant_id=tenant,
        agent_id=agent,
        customer_profile_id=profile.id,
        turns=_user("my city is Paris " * 2000),
    )
    service = GapFillService(store)
    with pytest.raises(errors.ValidationError, match="max_message_chars"):
        await service.try_conversation_extraction("city", session)


# ---------------------------------------------------------------------------------------
# linear work: the scan counter
# ---------------------------------------------------------------------------------------

# dense with candidates of every kind: numbers, dates, times, emails, allowed values,
# keywords, negations and clause breaks every few characters
_UNIT = (
    "my city is Paris, not Berlin; call +14155550123 or a.b@example.org on March 4th 2019 "
    "at 7 pm and 3 nights for two people. No wifi, any airline. "
)
REQUESTS: list[ExtractionRequest] = [
    ExtractionRequest(field_name="email", value_type=FieldValueType.EMAIL),
    ExtractionRequest(field_name="phone", value_type=FieldValueType.PHONE),
    ExtractionRequest(field_name="departure_date", value_type=FieldValueType.STRING),
    ExtractionRequest(field_name="birth_date", value_type=FieldValueType.DATE),
    ExtractionRequest(field_name="pickup_time"),
    ExtractionRequest(field_name="night_count", value_type=FieldValueType.NUMBER),
    ExtractionRequest(field_name="has_wifi", value_type=FieldValueType.BOOLEAN),
    ExtractionRequest(field_name="city"),
    ExtractionRequest(field_name="city", allowed_values=("Paris", "Berlin", "Rome")),
    ExtractionRequest(field_name="travelers", allowed_values=("1", "2", "3", "4")),
    ExtractionRequest(field_name="hotels_1__has_wifi", allowed_values=("True", "False")),
    ExtractionRequest(field_name="airlines", allowed_values=("Delta Airlines", "dontcare")),
]


async def _scanned(request: ExtractionRequest, text: str) -> int:
    extractor = OfflineExtractor(limits=BIG, today=TODAY, offload_chars=10**9)
    await extractor.extract(request, _user(text))
    return extractor.scanned_chars


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: f"{r.field_name}-{r.value_type}")
async def test_work_is_linear_in_the_text_whatever_the_candidates(
    request_: ExtractionRequest,
) -> None:
    unit = _UNIT * 8  # ~1.1k characters, ~200 candidates
    sizes = [1, 2, 4, 8, 16, 64]
    scans = [await _scanned(request_, unit * k) for k in sizes]
    for k, scanned in zip(sizes, scans, strict=True):
        # a fixed number of passes over the text, independent of its candidates
        assert scanned <= 16 * len(unit) * k
        # and exactly proportional to the size: no pass depends on the candidate count
        assert scanned * sizes[0] == scans[0] * k


async def test_a_hundred_thousand_characters_extract_with_a_bounded_number_of_passes() -> None:
    text = (_UNIT * (100_000 // len(_UNIT) + 1))[:100_000]
    for request in REQUESTS:
        extractor = OfflineExtractor(limits=BIG, today=TODAY)
        await extractor.extract(request, _user(text))  # offloaded to a thread
        assert extractor.scanned_chars <= 16 * len(text)


async def test_many_turns_are_each_scanned_a_bounded_number_of_times() -> None:
    request = ExtractionRequest(field_name="loyalty_number", value_type=FieldValueType.NUMBER)
    turns = _user(*["nothing to see here, really. " * 5] * 20)
    extractor = OfflineExtractor(limits=BIG)
    assert await extractor.extract(request, turns) is None
    total = sum(len(t.content) for t in turns)
    assert 0 < extractor.scanned_chars <= 16 * total


# ---------------------------------------------------------------------------------------
# what the offline extractor learned
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("at half past 11 in the morning", "11:30"),
        ("7 pm works", "19:00"),
        ("make it quarter to 5 in the evening", "16:45"),
        ("evening 4:30 please", "16:30"),
        ("one in the afternoon", "13:00"),
        ("12:30 pm", "12:30"),
        ("around noon", "12:00"),
        ("the appointment needs to be at evening 5", "17:00"),
        ('at 3 o"clock in the afternoon', "15:00"),
    ],
)
async def test_times_of_string_fields_named_time(text: str, value: str) -> None:
    found = await _one(ExtractionRequest(field_name="restaurants_2__time"), _user(text))
    assert found is not None and found.value == value and found.method == "offline:time"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("March 4th", "2019-03-04"),
        ("on the 12th of March 2019", "2019-03-12"),
        ("the 8th of this month", "2019-03-08"),
        ("today", "2019-03-01"),
        ("tomorrow please", "2019-03-02"),
        ("next Tuesday", "2019-03-05"),
        ("Monday next week", "2019-03-04"),
    ],
)
async def test_dates_of_string_fields_named_date(text: str, value: str) -> None:
    found = await _one(ExtractionRequest(field_name="appointment_date"), _user(text))
    assert found is not None and found.value == value


async def test_range_dates_go_to_the_right_end() -> None:
    text = _user("Leaving on March 4th and returning on the 9th")
    departure = await _one(ExtractionRequest(field_name="departure_date"), text)
    back = await _one(ExtractionRequest(field_name="return_date"), text)
    assert departure is not None and departure.value == "2019-03-04"
    assert back is not None and back.value == "2019-03-09"
    later = _user("Return will be on 4th of this month.")
    assert await _one(ExtractionRequest(field_name="departure_date"), later) is None
    found = await _one(ExtractionRequest(field_name="return_date"), later)
    assert found is not None and found.value == "2019-03-04"


def _counts(name: str) -> ExtractionRequest:
    return ExtractionRequest(field_name=name, allowed_values=("1", "2", "3", "4"))


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("restaurants_2__number_of_seats", "a table for two people at 4 pm", "2"),
        ("ridesharing_1__number_of_riders", "There'll be three of us", "3"),
        ("homes_1__number_of_beds", "2 bedrooms. Also, one bathroom.", "2"),
        ("homes_1__number_of_baths", "2 bedrooms. Also, one bathroom.", "1"),
        ("homes_1__number_of_beds", "I want three bed rooms", "3"),
        ("ridesharing_1__number_of_riders", "Can you get me a cab for two please?", "2"),
    ],
)
async def test_counts_written_as_words_go_to_the_field_they_count(
    name: str, text: str, value: str
) -> None:
    found = await _one(_counts(name), _user(text))
    assert found is not None and found.value == value and found.confidence >= 0.85


async def test_a_bare_number_or_an_hour_is_not_a_count() -> None:
    assert await _one(_counts("flights_3__number_stops"), _user("a one way flight")) is None
    assert await _one(_counts("restaurants_2__number_of_seats"), _user("at 4 pm")) is None
    asked = _turns(("assistant", "How many seats?"), ("user", "Just two"))
    found = await _one(_counts("restaurants_2__number_of_seats"), asked)
    assert found is not None and found.value == "2" and found.confidence == 0.7


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Find me something where pets are allowed", "True"),
        ("One that allows pets", "True"),
        ("No pets, please", "False"),
    ],
)
async def test_true_false_allowed_values_by_keyword_and_negation(text: str, value: str) -> None:
    request = ExtractionRequest(
        field_name="homes_1__pets_allowed", allowed_values=("True", "False")
    )
    found = await _one(request, _user(text))
    assert found is not None and found.value == value


async def test_a_namespace_word_is_not_the_fields_keyword() -> None:
    request = ExtractionRequest(
        field_name="ridesharing_1__shared_ride", allowed_values=("True", "False")
    )
    assert await _one(request, _user("I need a ride to the airport")) is None
    said = await _one(request, _user("A shared ride is fine"))
    assert said is not None and said.value == "True"
    for agreeing in ("Ok, no problem with a shared ride.", "I'm okay to share."):
        found = await _one(request, _user(agreeing))
        assert found is not None and found.value == "True", agreeing
    refused = await _one(request, _user("I don't want to share"))
    assert refused is not None and refused.value == "False"
    answer = await _one(
        request, _turns(("assistant", "Is a shared ride ok?"), ("user", "That works for me"))
    )
    assert answer is not None and answer.value == "True" and answer.confidence == 0.85


async def test_dontcare_and_fuzzy_labels() -> None:
    airlines = ExtractionRequest(
        field_name="flights_3__airlines",
        allowed_values=("United Airlines", "Delta Airlines", "dontcare"),
    )
    found = await _one(airlines, _user("I need a one way flight on any airline."))
    assert found is not None and found.value == "dontcare"
    assert await _one(airlines, _user("any time is fine")) is None
    flight_class = ExtractionRequest(
        field_name="flight_class", allowed_values=("Economy", "Premium Economy", "Business")
    )
    hyphen = await _one(flight_class, _user("premium-economy please"))
    assert hyphen is not None and hyphen.value == "Premium Economy"
    assert hyphen.method == "offline:allowed"
    kind = ExtractionRequest(
        field_name="services_4__type", allowed_values=("Psychologist", "Family Counselor")
    )
    typo = await _one(kind, _user("I'd like a family counsellor in Fremont"))
    assert typo is not None and typo.value == "Family Counselor"
    assert typo.method == "offline:allowed_fuzzy" and typo.confidence == 0.55


async def test_numbers_written_as_words_for_number_fields() -> None:
    request = ExtractionRequest(field_name="night_count", value_type=FieldValueType.NUMBER)
    asked = _turns(("assistant", "How many nights (night count)?"), ("user", "three"))
    found = await _one(request, asked)
    assert found is not None and found.value == 3 and found.confidence == 0.7


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("flights_3__origin_city", "I want to fly from San Francisco to New York", "San Francisco"),
        ("flights_3__destination_city", "I want to fly from San Francisco to New York", "New York"),
        ("buses_1__to_location", "A bus to Long Beach, CA on March 3rd", "Long Beach"),
        ("services_4__city", "Find me a psychologist in Fremont please", "Fremont"),
        ("weather_1__city", "What's the weather in SFO on Monday?", "SFO"),
        ("restaurants_2__location", "A table in San Jose. Can you try Sino?", "San Jose"),
        ("weather_1__city", "Is it raining in St. Louis? Thanks", "St. Louis"),
        ("flights_3__origin_city", "one way flights out of Mexico City please", "Mexico City"),
        ("services_4__city", "Find someone in the San Jose area", "San Jose"),
        (
            "ridesharing_1__destination",
            "I am going to 5434 Ygnacio Valley Road #90",
            "5434 Ygnacio Valley Road #90",
        ),
        ("restaurants_2__restaurant_name", "a table for 1 at Sipan for 11:30", "Sipan"),
        ("restaurants_2__restaurant_name", "In San Jose. Can you try Sino?", "Sino"),
        ("buses_1__to_location", "the destination is Sacramento.", "Sacramento"),
        ("buses_1__to_location", "I wanted to leave for San Diego.", "San Diego"),
        ("ridesharing_1__destination", "I am going to 125 crescent Drive", "125 crescent Drive"),
        (
            "ridesharing_1__destination",
            "I need a cab to 100 Van Ness Avenue ASAP!",
            "100 Van Ness Avenue",
        ),
    ],
)
async def test_places_by_the_preposition_of_their_role(name: str, text: str, value: str) -> None:
    found = await _one(ExtractionRequest(field_name=name), _user(text))
    assert found is not None and found.value == value and found.method == "offline:place"


async def test_something_named() -> None:
    request = ExtractionRequest(field_name="alarm_1__new_alarm_name")
    found = await _one(request, _user("Set an alarm at 5 pm called Grocery run."))
    assert found is not None and found.value == "Grocery run" and found.method == "offline:named"
    for text in ("add an alarm and call it Grocery Run at 4:45 pm", "one called Leave for home"):
        named = await _one(request, _user(text))
        assert named is not None and named.value in ("Grocery Run", "Leave for home"), text
    venue = ExtractionRequest(field_name="restaurants_2__restaurant_name")
    said = await _one(venue, _user("I heard that a place called Zaoh is really good"))
    assert said is not None and said.value == "Zaoh"
    assert await _one(ExtractionRequest(field_name="city"), _user("a town called Bree")) is None


async def test_a_place_needs_a_place_field_and_a_capitalised_name() -> None:
    assert await _one(ExtractionRequest(field_name="movie_name"), _user("a film in Paris")) is None
    assert await _one(ExtractionRequest(field_name="city"), _user("in March please")) is None
    assert await _one(ExtractionRequest(field_name="city"), _user("in the evening")) is None
    assert await _one(ExtractionRequest(field_name="city"), _user("for 12 people")) is None
    # "city was..." is a statement about the city; "city washington" is not
    found = await _one(ExtractionRequest(field_name="city"), _user("from city washington to X"))
    assert found is None or found.value != "hington to X"


async def test_gap_fill_from_settings_takes_the_extraction_limits() -> None:
    store = InMemoryProfileStore()
    tenant = uuid4()
    profile = await store.get_or_create(tenant, Channel.WEB, "visitor-2")
    session = Session(
        tenant_id=tenant,
        agent_id=uuid4(),
        customer_profile_id=profile.id,
        turns=_user("my city is Paris"),
    )
    settings = ccvault.load_settings(None, extraction={"max_message_chars": 10})
    service = GapFillService.from_settings(store, settings)
    assert isinstance(service.extractor, OfflineExtractor)
    with pytest.raises(errors.ValidationError, match="the limit is 10"):
        await service.try_conversation_extraction("city", session)
    roomy = GapFillService.from_settings(store, ccvault.load_settings(None))
    found = await roomy.try_conversation_extraction("city", session)
    assert found.filled and found.value == "Paris"
