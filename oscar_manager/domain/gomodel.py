"""A pydantic base that reads JSON the way Go's ``encoding/json`` does for OSCAR's types.

Upstream OSCAR decodes service definitions with Go, so real FDL files rely on its tolerance: keys match
fields case-insensitively (``environment.Variables`` in the cowsay example), ``null`` leaves a field at its
zero value, and keys the server does not know are not an error. We keep unknown keys (``extra="allow"``)
so that what a client sent comes back to it.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


class GoModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _match_keys_like_go(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        exact, folded = _spellings(cls)
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


@functools.cache
def _spellings(model: type[BaseModel]) -> tuple[dict[str, str], dict[str, str]]:
    """Each field's key as spelt, and by its lower case: worked out once per model, not per object."""
    exact = {field.alias or name: field.alias or name for name, field in model.model_fields.items()}
    return exact, {key.lower(): key for key in exact}


def go_text(value: Any) -> Any:
    """YAML turns ``cpu: 1.0`` into a float; quantities are strings in the schema, so accept both."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return str(value)
    return value


def _scalars_as_text(value: Any) -> Any:
    """Map values (env vars, labels) written as YAML numbers or booleans become their text."""
    if not isinstance(value, dict):
        return value
    out: dict[Any, Any] = {}
    for key, item in value.items():
        if isinstance(item, bool):
            out[key] = "true" if item else "false"
        elif isinstance(item, int | float):
            out[key] = str(item)
        else:
            out[key] = item
    return out


def _scalar_as_list(value: Any) -> Any:
    """OSCAR v3 had scalar ``api_port``/``nodePort``; v4 has lists. Accept both, 0 meaning none."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return [] if value == 0 else [value]
    return value


# Go's integer widths: a number the Go types cannot hold would make every Go client fail on the service.
Int32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
Quantity = Annotated[str, BeforeValidator(go_text)]
TextMap = Annotated[dict[str, str], BeforeValidator(_scalars_as_text)]
PortList = Annotated[list[Int64], BeforeValidator(_scalar_as_list)]
NodePortList = Annotated[list[Int32], BeforeValidator(_scalar_as_list)]
