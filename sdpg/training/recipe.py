"""The recipe of the built-in model (``model.embedded``) and the facts of the built-in tasks it needs.

Below both the configuration (which holds a recipe in ``model.embedded``) and the built-in task module
(which builds a model from one), so that neither imports the other.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

Task = Literal["sum", "chain"]
"""The built-in tasks, the choices of ``model.embedded.task`` (the one list of them)."""
TASKS: tuple[str, ...] = get_args(Task)
TASK_TARGET_ACCURACY = {"sum": 0.3, "chain": 0.15}
"""Default ``model.embedded.target_accuracy`` of each task (the shipped models' recipes): ``chain``
stops earlier so that RL starts near 10-20% pass@1 while the teacher with the solution is near 100%."""
EmbeddedTask = Task


INT_LIMIT = 2**63
"""Whole numbers beyond a signed 64-bit integer fit no tensor, array or SLURM field: refused everywhere."""


def _accepts(annotation: Any, kind: type) -> bool:
    """Whether a field's type admits values of ``kind`` itself (``bool`` is an ``int`` to Python, not to a spec)."""
    import typing

    if annotation is kind:
        return True
    if annotation is Any:
        return True
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        return any(isinstance(a, kind) for a in args)
    return any(_accepts(a, kind) for a in args if a is not type(None))


def _kind_problem(value: Any, annotation: Any) -> str | None:
    """Why ``value`` is of the wrong kind for ``annotation``: a boolean where no boolean is allowed, a whole
    number beyond 64 bits, a float that is not finite. Looks into lists and mapping values."""
    import math
    import typing

    if annotation is Any:  # free-form (overrides, kwargs): checked where the values land, under their own keys
        return None
    if isinstance(value, bool):
        return None if _accepts(annotation, bool) else f"{str(value).lower()} is a boolean, not a number"
    if isinstance(value, int) and abs(value) >= INT_LIMIT:
        return f"{value} is beyond a 64-bit integer"
    if isinstance(value, float) and not math.isfinite(value) and (_accepts(annotation, float) or _accepts(annotation, int)):
        return f"{value} is not a finite number"
    inner = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if isinstance(value, (list, tuple)) and origin in (list, tuple, set):
        for v in value:
            for a in inner or [Any]:
                why = _kind_problem(v, a)
                if why:
                    return why
    if isinstance(value, dict) and origin is dict and len(inner) == 2:
        for v in value.values():
            why = _kind_problem(v, inner[1])
            if why:
                return why
    return None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_kinds(cls, value: Any, info: Any) -> Any:
        """No booleans as counts or numbers, no whole number beyond 64 bits, no infinite or NaN float: checked
        before pydantic's coercion (which reads ``true`` as 1), in every spec and config model."""
        field = cls.model_fields.get(info.field_name) if info.field_name else None
        if field is not None:
            why = _kind_problem(value, field.annotation)
            if why:
                raise ValueError(why)
        return value


class EmbeddedModelConfig(Strict):
    """The built-in tiny Qwen3 model, built from a config and pre-trained on a built-in task. Each
    task's default recipe's model ships with the package; any other recipe is built once per machine."""

    task: EmbeddedTask = "sum"
    """Which built-in task the model is pre-trained on (docs/tasks.md): ``sum`` (three terms, any
    order; train on ``embedded``) or ``chain`` (four terms, strictly left to right; train on
    ``embedded_chain``). Left out of the recipe (and so of its hash) when ``sum``, so that the sum
    model's recipe and hash are those it had before the field existed."""

    hidden_size: int = Field(128, gt=0)
    """Width of the tiny model."""
    num_layers: int = Field(4, gt=0)
    """Transformer blocks."""
    num_heads: int = Field(4, gt=0)
    """Attention heads (2 key/value heads)."""
    pretrain_steps: int = Field(1500, ge=0)
    """Most supervised steps on worked solutions before RL (the cosine schedule's length)."""
    target_accuracy: float = Field(0.3, gt=0, le=1)
    """Pre-training stops at the first check (every 50 steps for ``sum``, 25 for ``chain``) where the
    student's sampled pass@1 on held-out problems reaches this: RL starts from a model that is neither
    hopeless nor done. Unset: the task's default (sum 0.3, chain 0.15), so that ``task`` alone picks
    the shipped model of either task."""
    pretrain_batch: int = Field(64, gt=0)
    """Sequences per pre-training step."""
    pretrain_lr: float = Field(2e-3, gt=0)
    """Pre-training learning rate (AdamW, 50 warm-up steps, cosine over ``pretrain_steps``)."""
    seed: int = 1234
    """Seed of the pre-training run; the build is deterministic for a given seed and recipe."""

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("target_accuracy") is None:
            task = data.get("task", "sum")
            data = {**data, "target_accuracy": TASK_TARGET_ACCURACY.get(task, TASK_TARGET_ACCURACY["sum"])}
        return data

    @model_serializer(mode="wrap")
    def _omit_sum_task(self, handler: Any) -> dict:
        d = handler(self)
        if d.get("task") == "sum":
            d.pop("task")
        return d
