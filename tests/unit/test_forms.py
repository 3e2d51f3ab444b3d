"""Request parsing: every malformed field value is an InvalidInput naming the problem, never another exception."""
from __future__ import annotations

import json
import random

import pytest
from flask import Flask

from api.forms import BodyTooLarge, MAX_JSON_BYTES, bool_field, fields, int_field, str_field, uploaded_image
from shared.errors import InvalidInput

app = Flask(__name__)


def _json_fields(raw: bytes):
    with app.test_request_context("/", method="POST", data=raw, content_type="application/json"):
        from flask import request

        return fields(request)


@pytest.mark.parametrize(("raw", "fragment"), [
    (b"[" * 1000 + b"]" * 1000, "nested too deeply|must be an object"),
    (b'{"a":' * 20_000 + b"1" + b"}" * 20_000, "nested too deeply"),
    (b"{oops", "not valid JSON"),
    (b'{"t": "\xff"}', "not valid JSON"),
    (b"[1, 2]", "must be an object"),
    (b'"text"', "must be an object"),
])
def test_bad_json_bodies(raw: bytes, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        _json_fields(raw)


def test_json_body_size_cap_is_413_material() -> None:
    with pytest.raises(BodyTooLarge, match=f"more than the {MAX_JSON_BYTES:,} bytes limit"):
        _json_fields(b'{"t": "' + b"x" * MAX_JSON_BYTES + b'"}')


def test_empty_json_body_is_an_empty_object() -> None:
    assert _json_fields(b"") == {}


@pytest.mark.parametrize(("value", "fragment"), [
    ("a\x00b", "NUL"), ("\ud800", "lone surrogate"), (5, "must be a string"), ({"a": 1}, "must be a string"),
    (["x"], "must be a string"),
])
def test_str_field_refuses_what_postgres_or_utf8_cannot_hold(value: object, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        str_field({"title": value}, "title")


def test_str_field_accepts_ordinary_unicode() -> None:
    assert str_field({"title": "Robe d'été 👗 – 红色"}, "title") == "Robe d'été 👗 – 红色"
    assert str_field({"title": ""}, "title") is None
    with pytest.raises(InvalidInput, match="title is required"):
        str_field({}, "title", required=True)


@pytest.mark.parametrize("raw", [None, ""])
def test_int_field_empty_means_default(raw: object) -> None:
    assert int_field({"k": raw}, "k", default=20, minimum=1, maximum=100) == 20


@pytest.mark.parametrize(("raw", "fragment"), [
    ("abc", "must be an integer"), (float("inf"), "must be an integer"), (float("nan"), "must be an integer"),
    (1e400, "must be an integer"), ("9" * 5000, "must be an integer"), (True, "must be an integer"),
    ([1], "must be an integer"), ({"a": 1}, "must be an integer"), (2.5, "must be an integer"),
    (-1, "between 1 and 100"), (10**30, "between 1 and 100"),
])
def test_int_field_bad_values(raw: object, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment) as info:
        int_field({"k": raw}, "k", default=20, minimum=1, maximum=100)
    assert len(str(info.value)) < 200  # never echoes a huge value back


def test_fuzz_field_values_only_raise_invalid_input() -> None:
    """Property-style: random JSON-ish values in every field type end as a value or an InvalidInput."""
    rnd = random.Random(14)
    atoms = ["", "x", "\x00", "\ud800", "\udfff", "1e400", "-0", "0x10", " 7 ", "٣", "NaN", 0, -1, 2**70, 1.5,
             float("inf"), True, None, [], {}, [[[]]], {"a": {"b": []}}]
    for _ in range(2000):
        value = rnd.choice(atoms)
        if rnd.random() < 0.3:
            value = "".join(rnd.choice(["a", "\x00", "\ud800", "é", "1", " "]) for _ in range(rnd.randrange(8)))
        try:
            int_field({"k": value}, "k", default=20, minimum=1, maximum=100)
        except InvalidInput:
            pass
        try:
            str_field({"t": value}, "t")
        except InvalidInput:
            pass
    # and the same through a real JSON body: whatever json.loads accepts, fields() returns or refuses cleanly
    for _ in range(300):
        body = {"k": rnd.choice(atoms), "title": rnd.choice(atoms)}
        raw = json.dumps(body).encode()
        try:
            parsed = _json_fields(raw)
            int_field(parsed, "k", default=20, minimum=1, maximum=100)
            str_field(parsed, "title")
        except InvalidInput:
            pass


def test_upload_together_with_image_url_is_refused() -> None:
    import io

    with app.test_request_context("/", method="POST", data={"image": (io.BytesIO(b"abc"), "a.jpg"),
                                                            "image_url": "http://example.com/a.jpg"}):
        from flask import request

        with pytest.raises(InvalidInput, match="not both"):
            uploaded_image(request)
    with app.test_request_context("/", method="POST", data={"image": (io.BytesIO(b""), "a.jpg")}):
        from flask import request

        with pytest.raises(InvalidInput, match="empty"):
            uploaded_image(request)


@pytest.mark.parametrize("raw,value", [(None, False), ("", False), (True, True), (False, False), ("true", True),
                                       ("1", True), ("Yes", True), ("false", False), ("0", False), ("no", False)])
def test_bool_field_values(raw: object, value: bool) -> None:
    assert bool_field({"partial": raw}, "partial") is value


@pytest.mark.parametrize("raw", ["maybe", 1, 0.0, [], {}])
def test_bool_field_refuses_anything_else(raw: object) -> None:
    with pytest.raises(InvalidInput, match="partial"):
        bool_field({"partial": raw}, "partial")
