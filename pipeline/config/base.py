"""The shared base of every settings section: `SettingsSection` (pydantic: unknown keys, `.inf` and
`.nan` refused), the typo-catching upper bounds and the "unknown key, did you mean" message.

Example:
    >>> unknown_key_message("modle", ["data", "model"], "a section")
    "unknown key 'modle' (expected a section). Did you mean 'model'? Valid: data, model"
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict

MAX_DEPTH = 512
MAX_LR = 100.0
"""Upper bounds that only catch typos (`depth=100000`, `matrix_lr=2e5`); memory is checked
against the device when training starts (`train.max_memory_gb`)."""


class SettingsSection(BaseModel):
    # allow_inf_nan=False: `.inf` / `.nan` in any float (lists included) is refused when
    # settings load, instead of training to a NaN loss that exits 0.
    model_config = ConfigDict(
        extra="forbid",
        use_attribute_docstrings=True,
        validate_assignment=True,
        allow_inf_nan=False,
    )


def unknown_key_message(key: str, valid: Iterable[str], what: str) -> str:
    valid = list(valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown key {key!r} (expected {what}).{hint} Valid: {', '.join(valid)}"
