"""A pydantic base that reads JSON the way Go's ``encoding/json`` does for OSCAR's types.

Upstream OSCAR decodes service definitions with Go, so real FDL files rely on its tolerance: keys match
fields case-insensitively (``environment.Variables`` in the cowsay example), ``null`` leaves a field at its
zero value, and keys the server does not know are not an error. We keep unknown keys (``extra="allow"``)
so that what a client sent comes back to it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class GoModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _match_keys_like_go(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        exact: dict[str, str] = {}
        for name, field in cls.model_fields.items():
            exact[field.alias or name] = field.alias or name
        folded = {key.lower(): key for key in exact}
        matched: dict[str, Any] = {}
        extras: dict[str, Any] = {}
        for raw_key, value in data.items():
            if not isinstance(raw_key, str):
                raise ValueError(f"keys must be strings, got {raw_key!r}")
            key: str | None = exact.get(raw_key) or folded.get(raw_key.lower())
            if key is None:
                extras[raw_key] = value
                continue
            # An exact spelling wins over a case-folded one, whatever their order.
            if key in matched and raw_key != key:
                continue
            if value is None:
                # Go leaves the zero value in place for JSON null.
                matched.pop(key, None)
                continue
            matched[key] = value
        return {**extras, **matched}
