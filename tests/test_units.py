"""Unit normalisation: known units convert exactly, unknown units are never guessed."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from hooks.units import Measured, dose_in_grams, parse_value_string, to_kg, to_mg_dl, to_ug_ml


@pytest.mark.parametrize(("value", "unit", "mg_dl"), [
    (32, "mg/dL", 32), (32, "mg/dl", 32), (0.32, "g/L", 32), (0.32, "g/l", 32), (320, "mg/L", 32),
    (8.5, "g/L", 850), (3500, "mg/L", 350),
])
def test_immunoglobulin_units(value, unit, mg_dl):
    assert to_mg_dl(value, unit) == pytest.approx(mg_dl)


@pytest.mark.parametrize("unit", ["mmol/L", "IU/mL", "%", "", None, "mg", "kg"])
def test_unknown_units_are_not_guessed(unit):
    assert to_mg_dl(32, unit) is None


@pytest.mark.parametrize(("unit", "factor"), [("ug/mL", 1), ("mcg/mL", 1), ("µg/mL", 1), ("mg/L", 1)])
def test_titer_units(unit, factor):
    assert to_ug_ml(1.3, unit) == pytest.approx(1.3 * factor)


def test_titer_unknown_unit():
    assert to_ug_ml(1.3, "mg/dL") is None
    assert to_ug_ml(1.3, "[arb'U]/mL") is None


def test_weight_units():
    assert to_kg(70, "kg") == 70
    assert to_kg(70000, "g") == pytest.approx(70)
    assert to_kg(154.3236, "[lb_av]") == pytest.approx(70, rel=1e-4)
    assert to_kg(70, "stone") is None


@pytest.mark.parametrize(("value", "unit", "expected"), [
    (35, "g", (35, False)), (500, "mg/kg", (0.5, True)), (0.5, "g/kg", (0.5, True)), (35000, "mg", (35, False)),
])
def test_dose_units(value, unit, expected):
    grams, per_kg = dose_in_grams(value, unit)
    assert grams == pytest.approx(expected[0]) and per_kg is expected[1]


def test_dose_in_volume_is_not_a_mass():
    assert dose_in_grams(350, "mL") is None


@given(st.floats(min_value=0.001, max_value=1e5, allow_nan=False))
def test_conversions_are_consistent(mg_dl):
    """The same concentration written in three units normalises to one value."""
    assert to_mg_dl(mg_dl / 100, "g/L") == pytest.approx(mg_dl, rel=1e-9)
    assert to_mg_dl(mg_dl * 10, "mg/L") == pytest.approx(mg_dl, rel=1e-9)
    assert to_mg_dl(mg_dl, "mg/dL") == mg_dl


@given(st.floats(min_value=0.001, max_value=1e4, allow_nan=False), st.floats(min_value=0.001, max_value=1e4, allow_nan=False))
def test_exact_values_compare_exactly(value, threshold):
    assert Measured(value).certainly_below(threshold) is (value < threshold)


@pytest.mark.parametrize(("comparator", "value", "threshold", "below"), [
    ("<", 7, 40, True),      # "<7" is certainly below 40
    ("<", 50, 40, None),     # "<50" could be 45 or 30
    ("<=", 40, 40, True),
    (">", 50, 40, False),    # ">50" is certainly not below 40
    (">", 30, 40, None),
    (">=", 40, 40, False),
])
def test_comparators_are_bounds(comparator, value, threshold, below):
    assert Measured(value, comparator).certainly_below(threshold) is below


@pytest.mark.parametrize(("text", "parsed"), [
    ("<7 mg/dL", ("<", 7.0, "mg/dL")), ("< 7", ("<", 7.0, None)), ("0,32 g/L", (None, 0.32, "g/L")),
    ("≥1.3 ug/mL", (">=", 1.3, "ug/mL")), ("not done", None), ("", None),
])
def test_value_strings(text, parsed):
    assert parse_value_string(text) == parsed
