"""The one validation layer: records converted to bounded types, one error naming the field's path."""
from __future__ import annotations

from typing import Annotated

import msgspec
import pytest
from msgspec import Meta

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.schema import SchemaError, convert, decode_json, to_builtins
from dinosaw_deploy.segment.classifier import ClassifierParams
from dinosaw_deploy.segment.options import ModelOptions


class Inner(msgspec.Struct, forbid_unknown_fields=True):
    angles: Annotated[int, Meta(ge=1, le=180)]


class Outer(msgspec.Struct, forbid_unknown_fields=True):
    inner: Inner
    items: list[Inner] = []

    def __post_init__(self) -> None:
        if len(self.items) > 2:
            raise DinosawError("items: at most 2")


@pytest.mark.parametrize("record, message", [
    ({"inner": {"angles": 10_000_000}}, "src: inner.angles: expected `int` <= 180"),
    ({"inner": {"angles": True}}, "src: inner.angles: expected `int`, got `bool`"),
    ({"inner": {"angles": 3, "extra": 1}}, "src: inner.extra is not a known field"),
    ({"inner": {}}, "src: inner.angles is missing"),
    ({}, "src: inner is missing"),
    ({"inner": {"angles": 3}, "items": [{"angles": 3}, {"angles": 0}]}, "src: items[1].angles: expected `int` >= 1"),
    ({"inner": {"angles": 3}, "items": [{"angles": 3}] * 3}, "src: items: at most 2"),
    ([1, 2], "src: the record: expected `object`, got `array`"),
])
def test_a_refusal_is_one_line_naming_the_field(record, message):
    with pytest.raises(SchemaError) as caught:
        convert(record, Outer, "src")
    assert str(caught.value) == message


def test_json_is_decoded_into_the_type_or_refused_as_json():
    assert decode_json(b'{"inner": {"angles": 4}}', Outer, "f").inner.angles == 4
    with pytest.raises(SchemaError, match=r"^f: inner.angles: expected `int` <= 180$"):
        decode_json(b'{"inner": {"angles": 400}}', Outer, "f")
    with pytest.raises(SchemaError, match=r"^f: not valid JSON"):
        decode_json(b'{"inner": ', Outer, "f")


def test_config_types_round_trip_as_plain_data():
    params = ClassifierParams(rounds=7)
    assert to_builtins(params) == {"max_depth": 8, "learning_rate": 0.5, "rounds": 7, "max_bin": 256, "seed": 0}
    assert convert(to_builtins(params), ClassifierParams, "c") == params


def test_the_python_api_is_held_to_the_bundle_bounds():
    """A value built in code gets the same bound a bundle's value gets."""
    with pytest.raises(SchemaError, match=r"^classifier: max_depth: expected `int` <= 64$"):
        ModelOptions(classifier=ClassifierParams(max_depth=1000))
