"""peft's per-module overrides of an adapter's rank and alpha (`rank_pattern`, `alpha_pattern` in
adapter_config.json), looked up as peft does, so the adapter writer and the merge read one adapter
the same way peft trained it."""

from __future__ import annotations

import re


def pattern_value(patterns: dict | None, module_name: str, default):
    """The value of the first pattern matching the end of `module_name` (the module's full name,
    e.g. model.layers.3.self_attn.q_proj) at a dot boundary, as a regex (peft's get_pattern_key);
    else `default`."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module_name):
            return value
    return default
