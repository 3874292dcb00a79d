"""[precision] mixed: Megatron Bridge's named mixed-precision recipes, as the [precision] keys each one sets.

The values are those of Megatron Bridge's ``training/mixed_precision.py`` recipe
functions of the same names, restricted to what bridgec's keys express (the fp8
format is always "hybrid" except for mxfp8, whose recipe fixes it). A recipe
fills only the keys the spec leaves out, before the tables are structured, so
every later stage sees ordinary [precision] values and ``bridgec explain`` and
the script's constants show the result.
"""

from __future__ import annotations

from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    "bf16_mixed": {"dtype": "bf16"},
    "fp16_mixed": {"dtype": "fp16"},
    "bf16_with_fp8_delayed_scaling_mixed": {"dtype": "bf16", "fp8": "delayed", "fp8_param_gather": True},
    "bf16_with_fp8_current_scaling_mixed": {
        "dtype": "bf16",
        "fp8": "tensorwise",
        "fp8_param_gather": True,
        "fp8_bf16_first_layers": 1,
        "fp8_bf16_last_layers": 1,
    },
    "bf16_with_mxfp8_mixed": {"dtype": "bf16", "fp8": "mxfp8", "fp8_param_gather": True},
    "bf16_with_fp8_subchannel_scaling_mixed": {"dtype": "bf16", "fp8": "blockwise"},
}
"""Recipe name -> the [precision] keys it sets (every value of spec.MixedPrecision)."""


def fill_recipe(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` (parsed TOML) with [precision] mixed's keys added where the spec does not write them.

    An unknown name is left for the loader to report (precision.mixed is a Literal).
    """
    precision = raw.get("precision")
    if not isinstance(precision, dict) or not isinstance(precision.get("mixed"), str):
        return raw
    recipe = RECIPES.get(precision["mixed"])
    if recipe is None:
        return raw
    return {**raw, "precision": {**recipe, **precision}}
