"""Settings declared once: each config field carries its default, help, choices and bounds.

The dataclasses (ModelConfig, TrainConfig) validate themselves from this metadata, and the
command line derives its flags from it, so a default or a list of choices lives in one place.
"""

from __future__ import annotations

from dataclasses import Field, field, fields

from .errors import CharRNNError


def option(default, help: str, *, choices: tuple | None = None, minimum=None, above=None,
           below=None) -> Field:
    """A dataclass field with its user-facing description. minimum is inclusive; above and
    below are exclusive bounds."""
    return field(default=default, metadata={"help": help, "choices": choices, "minimum": minimum,
                                            "above": above, "below": below})


def same_option(config_cls, name: str) -> Field:
    """The field `name` of another config dataclass, default and description included."""
    f = next(f for f in fields(config_cls) if f.name == name)
    return field(default=f.default, metadata=f.metadata)


def validate(config) -> None:
    """Check every field against its choices and bounds; None passes (it means "not set")."""
    for f in fields(config):
        meta, value = f.metadata, getattr(config, f.name)
        if not meta or value is None:
            continue
        if meta["choices"] is not None and value not in meta["choices"]:
            raise CharRNNError(f"unknown {f.name} {value!r}; choose one of {', '.join(meta['choices'])}")
        if meta["minimum"] is not None and value < meta["minimum"]:
            raise CharRNNError(f"{f.name} must be >= {meta['minimum']}, got {value!r}")
        if meta["above"] is not None and value <= meta["above"]:
            raise CharRNNError(f"{f.name} must be > {meta['above']}, got {value!r}")
        if meta["below"] is not None and value >= meta["below"]:
            raise CharRNNError(f"{f.name} must be < {meta['below']}, got {value!r}")


def value_type(f: Field) -> type:
    """The Python type of a field from its annotation ("int | None" -> int)."""
    name = str(f.type).replace(" | None", "").replace("Optional[", "").rstrip("]")
    return {"str": str, "int": int, "float": float, "bool": bool}[name]
