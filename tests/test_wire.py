"""Wire formats: golden samples keep decoding byte-for-byte; names that become subjects."""

from __future__ import annotations

from pathlib import Path

import pytest

import schemas
from schemas import InvalidNameError, check_effect_kind, check_event_name, check_run_id

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("line", (GOLDEN / "journal-v1.jsonl").read_bytes().splitlines())
def test_golden_journal_events_decode_and_reencode(line: bytes) -> None:
    """Journals written by v1 keep decoding; re-encoding keeps every v1 byte and only
    appends fields added since (with their defaults) at the end."""
    event = schemas.decode_event(line)
    again = schemas.encode_event(event)
    assert again[: len(line) - 1] == line[:-1]
    assert again == line or again[len(line) - 1 : len(line)] == b","
    assert schemas.decode_event(again) == event


@pytest.mark.parametrize("line", (GOLDEN / "inbox-v1.jsonl").read_bytes().splitlines())
def test_golden_inbox_messages_decode_and_reencode(line: bytes) -> None:
    """Inbox messages (what handlers in any language send) keep decoding; re-encoding
    keeps every v1 byte and only appends fields added since."""
    message = schemas.decode_inbox(line)
    again = schemas.encode_inbox(message)
    assert again[: len(line) - 1] == line[:-1]
    assert again == line or again[len(line) - 1 : len(line)] == b","
    assert schemas.decode_inbox(again) == message


def test_every_journal_tag_has_a_golden_sample() -> None:
    """Adding an event type means adding its golden sample (tags are forever)."""
    lines = (GOLDEN / "journal-v1.jsonl").read_bytes().splitlines()
    sampled = {schemas.event_type(schemas.decode_event(line)) for line in lines}
    declared = {t.__struct_config__.tag for t in schemas.JournalEvent.__args__}  # type: ignore[attr-defined]
    assert sampled == declared


def test_unknown_fields_are_tolerated_but_types_are_strict() -> None:
    """Newer writers may add fields; a wrong type is refused with the path."""
    line = (GOLDEN / "journal-v1.jsonl").read_bytes().splitlines()[1]
    newer = line[:-1] + b',"added_later":1}'
    assert schemas.decode_event(newer) == schemas.decode_event(line)
    with pytest.raises(Exception, match=r"\$\.seq"):
        schemas.decode_event(line.replace(b'"seq":1', b'"seq":"1"'))


@pytest.mark.parametrize("bad", ["", "a.b", "a b", "x*", "r>", "é", "x" * 129])
def test_bad_ids_are_refused_not_escaped(bad: str) -> None:
    """Run ids / event names that cannot be subject tokens are refused with what is allowed."""
    with pytest.raises(InvalidNameError, match="A-Z a-z 0-9 _ -"):
        check_run_id(bad)
    with pytest.raises(InvalidNameError):
        check_event_name(bad)


def test_effect_kinds() -> None:
    """Effect kinds are dotted lowercase tokens."""
    assert check_effect_kind("llm.chat") == "llm.chat"
    for bad in ["LLM", "a..b", "a.*", "", "a.b.c.d.e"]:
        with pytest.raises(InvalidNameError):
            check_effect_kind(bad)


def test_envelope_schema_document_is_current() -> None:
    """docs/envelope.schema.json is the envelope the CLI prints (regenerate when it changes)."""
    import json

    doc = Path(__file__).parent.parent / "docs" / "envelope.schema.json"
    assert json.loads(doc.read_text()) == schemas.envelope_schema(), (
        'regenerate: python -c "import json, schemas; print(json.dumps('
        'schemas.envelope_schema(), indent=2, sort_keys=True))" > docs/envelope.schema.json'
    )
