"""api.refine parsing (edit / palette / facets, with 400s that name what is wrong) and shared.colours histograms."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from api.refine import TARGET_COLOUR_WEIGHT, parse_refine
from shared.colours import SWATCHES, colour_histogram_of, palette_histogram, parse_colour
from shared.errors import InvalidInput
from shared.taxonomy import load_taxonomy
from shared.vision.features import colour_histogram

TAX = load_taxonomy()


def _id(key: str) -> int:
    return TAX.attribute(key).id


def test_short_form_requires_excludes_and_recolours():
    r = parse_refine({"edit": "sleeve.sleeveless,-pattern.striped navy"}, TAX)
    assert r.require == (_id("sleeve.sleeveless"), _id("colour.navy"))
    assert r.exclude == (_id("pattern.striped"),)
    assert r.colour.key == "colour.navy" and r.colour.hex == SWATCHES["navy"]
    np.testing.assert_allclose(r.target, colour_histogram_of(SWATCHES["navy"]))
    fields = r.daemon_fields()
    # A named colour keeps the daemon's tuned weight; a free #rrggbb gets TARGET_COLOUR_WEIGHT.
    assert fields["require"] == list(r.require) and "colour_weight" not in fields and "appearance" not in fields
    assert parse_refine({"edit": "#123456"}, TAX).daemon_fields()["colour_weight"] == TARGET_COLOUR_WEIGHT


def test_object_form_and_hex_colour_is_soft():
    r = parse_refine({"edit": '{"require": ["neckline.v_neck"], "colour": "#00AA00"}', "facets": "200"}, TAX)
    assert r.require == (_id("neckline.v_neck"),) and r.colour.attribute_id is None and r.colour.hex == "#00aa00"
    assert r.facets == 200 and r.target is not None
    # A required named colour is a colour change as well.
    r2 = parse_refine({"edit": {"require": ["colour.green"]}}, TAX)
    assert r2.colour.key == "colour.green" and r2.require == (_id("colour.green"),)


def test_no_fields_no_refinement():
    r = parse_refine({}, TAX)
    assert not r.active and r.daemon_fields() == {"require": [], "exclude": [], "facets": 0}


@pytest.mark.parametrize("body,message", [
    ({"edit": "sleeve.sleevless"}, "'sleeve.sleevless'.*sleeve.sleeveless"),
    ({"edit": "-shape.round,material.cotton"}, "'shape.round'.*groups: gender"),
    ({"edit": {"require": ["fit.slim"], "exclude": ["fit.slim"]}}, "fit.slim are both required and excluded"),
    ({"edit": "navy,#ffffff"}, "two target colours"),
    ({"edit": "teal"}, "unknown colour 'teal'"),
    ({"edit": {"colour": "red", "wish": 1}}, "unknown field.*wish"),
    ({"edit": "{not json"}, "edit is not valid JSON"),
    ({"palette": "navy:0.5,white:0.3,red:0.1,black:0.1"}, "1 to 3 colours"),
    ({"palette": "navy:-1"}, "positive"),
    ({"palette": "navy", "edit": "red"}, "either edit.colour or palette"),
    ({"facets": 1001}, "facets must be between 0 and 1000"),
    ({"facets": "many"}, "facets must be an integer"),
])
def test_bad_fields_are_400s_that_name_the_problem(body, message):
    with pytest.raises(InvalidInput, match=message):
        parse_refine(body, TAX)


def test_inapplicable_attributes_are_named():
    r = parse_refine({"edit": "sleeve.sleeveless,-footwear_style.heels"}, TAX)
    with pytest.raises(InvalidInput, match="sleeve.sleeveless do not apply to category footwear"):
        r.check_applicable(TAX, TAX.category("footwear").id)
    with pytest.raises(InvalidInput, match="footwear_style.heels do not apply to category dress"):
        r.check_applicable(TAX, TAX.category("dress").id)


def test_palette_is_a_weighted_mix_of_swatch_histograms():
    r = parse_refine({"palette": '[{"colour": "navy", "weight": 3}, {"colour": "#ffffff", "weight": 1}]'}, TAX)
    assert [round(w, 3) for _, w in r.palette] == [0.75, 0.25]
    want = 0.75 * colour_histogram_of(SWATCHES["navy"]) + 0.25 * colour_histogram_of("#ffffff")
    np.testing.assert_allclose(r.target, want, atol=1e-6)
    assert r.daemon_fields(photo=False)["appearance"] is False
    assert r.daemon_fields(photo=False)["colour_weight"] == 1.0
    np.testing.assert_allclose(palette_histogram(["#ffffff"], [2.0]), colour_histogram_of("#ffffff"))


def test_swatch_histograms_use_the_pipeline_binning():
    # A flat patch of the swatch colour, binned by the pipeline's own function, falls where the swatch's weight is.
    for name in ("navy", "red", "white", "green"):
        hist = colour_histogram_of(SWATCHES[name])
        assert abs(float(hist.sum()) - 1.0) < 1e-6
        rgb = tuple(int(SWATCHES[name][i:i + 2], 16) for i in (1, 3, 5))
        patch = colour_histogram(Image.new("RGB", (8, 8), rgb), use_mask=False)
        assert hist[int(np.argmax(patch))] >= 0.5
    assert parse_colour("colour.navy", TAX).attribute_id == _id("colour.navy")
    with pytest.raises(ValueError, match="#rrggbb"):
        parse_colour("#12345", TAX)
