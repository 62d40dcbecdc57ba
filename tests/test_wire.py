"""Wire formats: golden samples keep decoding byte-for-byte; names that become subjects."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
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


ENVELOPE_DOC = Path(__file__).parent.parent / "docs" / "envelope.schema.json"
REGENERATE = (
    'regenerate: .venv/bin/python -c "import json, schemas; print(json.dumps('
    'schemas.envelope_schema(), indent=2, sort_keys=True))" > docs/envelope.schema.json'
)


def schema_contract(schema: dict[str, Any]) -> dict[str, str]:
    """What a JSON Schema promises a reader, without how a generator happened to write it:
    ``{"$root": "Envelope", "Envelope.run_id": "null | string, optional", ...}``.

    Every object with properties becomes a definition named by its title (else by the last
    segment of the $ref that reached it), each of its fields one entry. Types are
    normalised: $refs resolved to definition names, anyOf/oneOf and type lists become one
    sorted union, single-item allOf is unwrapped; titles, descriptions, defaults, examples
    and key order are presentation and are dropped.
    """
    defs: dict[str, dict[str, tuple[str, bool]]] = {}

    def resolve(ref: str) -> tuple[str, dict[str, Any]]:
        assert ref.startswith("#/"), f"only local $refs are expected, got {ref}"
        node: Any = schema
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return part, node

    def struct(name: str, node: dict[str, Any]) -> str:
        if name not in defs:
            defs[name] = {}  # placeholder first: a definition may refer to itself
            required = set(node.get("required", ()))
            defs[name] = {
                field: (render(sub), field in required) for field, sub in node["properties"].items()
            }
        return name

    def alternatives(node: Any, name: str | None = None) -> set[str]:
        if node is True or not isinstance(node, dict):
            return {"any"}
        if "$ref" in node:
            segment, target = resolve(node["$ref"])
            return alternatives(target, segment)
        for key in ("anyOf", "oneOf"):
            if key in node:
                return set().union(*(alternatives(sub) for sub in node[key]))
        if len(node.get("allOf", ())) == 1:
            return alternatives(node["allOf"][0], name)
        if "const" in node or "enum" in node:
            values = [node["const"]] if "const" in node else node["enum"]
            return {"enum" + json.dumps(sorted(values, key=json.dumps))}
        types = node.get("type")
        if types is None:
            return {"any"}
        found: set[str] = set()
        for kind in [types] if isinstance(types, str) else types:
            if kind == "object" and "properties" in node:
                found.add(struct(node.get("title", name or "?"), node))
            elif kind == "object":
                found.add(f"object[{render(node.get('additionalProperties', True))}]")
            elif kind == "array" and "prefixItems" in node:
                found.add(f"tuple[{', '.join(render(s) for s in node['prefixItems'])}]")
            elif kind == "array":
                found.add(f"array[{render(node.get('items', True))}]")
            elif kind == "string" and "format" in node:
                found.add(f"string:{node['format']}")
            else:
                found.add(kind)
        return found

    def render(node: Any) -> str:
        found = alternatives(node)
        return "any" if "any" in found else " | ".join(sorted(found))

    contract = {"$root": render(schema)}
    for name, fields in defs.items():
        for field, (kind, required) in fields.items():
            contract[f"{name}.{field}"] = f"{kind}, {'required' if required else 'optional'}"
    return contract


def test_envelope_schema_document_is_current() -> None:
    """docs/envelope.schema.json promises exactly the envelope the CLI prints: the same
    definitions, fields, types and required fields (however a msgspec release lays it out)."""
    published = schema_contract(json.loads(ENVELOPE_DOC.read_text()))
    assert published == schema_contract(schemas.envelope_schema()), REGENERATE
    # And, independently of any schema generator, the names and required-ness of the
    # fields of our types themselves.
    types = (schemas.Envelope, schemas.WaitInfo, schemas.ErrorInfo)
    expected = {"$root": "Envelope"} | {
        f"{t.__name__}.{f.encode_name}": "required" if f.required else "optional"
        for t in types
        for f in msgspec.structs.fields(t)
    }
    assert {k: v.rsplit(", ", 1)[-1] for k, v in published.items()} == expected


def _anyof_as_type_lists(node: Any) -> Any:
    if isinstance(node, list):
        return [_anyof_as_type_lists(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _anyof_as_type_lists(v) for k, v in node.items()}
    subs = node.get("anyOf", ())
    if subs and all(set(sub) == {"type"} for sub in subs):
        del node["anyOf"]
        node["type"] = [sub["type"] for sub in subs]
    return node


def _inline_root_and_rename_defs(doc: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(doc).replace("#/$defs/", "#/definitions/")
    moved: dict[str, Any] = json.loads(text)
    moved["definitions"] = moved.pop("$defs")
    root = moved.pop("$ref").rsplit("/", 1)[1]
    return {**moved["definitions"][root], "definitions": moved["definitions"]}


def _strip_annotations(node: Any, *, keep_all: bool = False) -> Any:
    """Titles, descriptions and defaults dropped, keys in reverse order."""
    if isinstance(node, list):
        return [_strip_annotations(n) for n in node]
    if not isinstance(node, dict):
        return node
    dropped = set() if keep_all else {"title", "description", "default", "examples"}
    return {  # a "properties" map is keyed by field names: keep them all
        k: _strip_annotations(v, keep_all=k == "properties" and not keep_all)
        for k, v in reversed(node.items())
        if k not in dropped
    }


@pytest.mark.parametrize(
    "present",
    [_anyof_as_type_lists, _inline_root_and_rename_defs, _strip_annotations],
    ids=["anyof-as-type-lists", "inline-root-definitions", "annotations-and-order"],
)
def test_schema_contract_ignores_presentation(present: Callable[[Any], Any]) -> None:
    """A schema library's change of layout does not change the envelope contract."""
    doc = json.loads(ENVELOPE_DOC.read_text())
    assert schema_contract(present(copy.deepcopy(doc))) == schema_contract(doc)


def _rename(doc: dict[str, Any]) -> None:
    props = doc["$defs"]["WaitInfo"]["properties"]
    props["deadline_at"] = props.pop("deadline")


def _remove(doc: dict[str, Any]) -> None:
    del doc["$defs"]["Envelope"]["properties"]["current_step_id"]


def _retype(doc: dict[str, Any]) -> None:
    doc["$defs"]["ErrorInfo"]["properties"]["retryable"]["type"] = "string"


def _retype_nested(doc: dict[str, Any]) -> None:
    doc["$defs"]["Envelope"]["properties"]["problems"]["items"]["type"] = "integer"


def _make_optional(doc: dict[str, Any]) -> None:
    doc["$defs"]["Envelope"]["required"].remove("status")


def _make_required(doc: dict[str, Any]) -> None:
    doc["$defs"]["WaitInfo"]["required"].append("prompt")


def _drop_null(doc: dict[str, Any]) -> None:
    doc["$defs"]["Envelope"]["properties"]["run_id"] = {"type": "string"}


@pytest.mark.parametrize(
    "change",
    [_rename, _remove, _retype, _retype_nested, _make_optional, _make_required, _drop_null],
)
def test_schema_contract_sees_every_field_change(change: Callable[[Any], None]) -> None:
    """Renaming, removing, retyping a field or changing its required-ness, in the envelope
    or a nested definition, changes the contract (so the document check fails)."""
    doc = json.loads(ENVELOPE_DOC.read_text())
    changed = copy.deepcopy(doc)
    change(changed)
    assert schema_contract(changed) != schema_contract(doc)
