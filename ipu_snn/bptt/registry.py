"""The BPTT schedules a run can name: one class per schedule, owning its parameters, defaults and cost.

As in Firedrake's ``checkpoint_schedules``, a schedule is an object made from its
arguments: ``Revolve(slots=4)``. ``build(windows)`` gives the `Schedule` (plain
data) over a run's windows, with every unset parameter at its default (about
sqrt(windows), which keeps memory near 2 sqrt(windows) window states for about one
extra forward pass); ``resolved(windows)`` is the same object with those defaults
written in. `SCHEDULES` maps each ``bptt.schedule`` name to its class: the config's
``bptt`` section, the planner and ``ipu-snn plan`` all read it, so adding a schedule
is adding a class here (docs/architecture.md).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, PositiveInt

from .schedules import Costs, Schedule, double, predicted_time, revolve, store_all, two_level_optimal, uniform


def sqrt_default(windows: int) -> int:
    """The default size of a schedule's interval or slots: ceil(sqrt(windows))."""
    return max(1, math.isqrt(windows - 1) + 1) if windows > 1 else 1


class ScheduleKind(BaseModel):
    """A schedule of the registry: its parameters are the model's fields; None means the default."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)
    #: the ``bptt.schedule`` name
    name: ClassVar[str]

    def build(self, windows: int, costs: Costs = Costs()) -> Schedule:
        """The schedule over ``windows`` windows. ``costs``: relative costs, for a schedule that searches."""
        raise NotImplementedError

    def resolved(self, windows: int, costs: Costs = Costs()) -> "ScheduleKind":
        """This schedule with every default filled in for ``windows`` windows."""
        return self

    def cost(self, windows: int, costs: Costs) -> float:
        """Predicted time of the schedule over ``windows`` windows (`predicted_time`)."""
        return predicted_time(self.build(windows, costs), costs)

    def parameters(self) -> dict:
        """The schedule's own parameters (without fields a subclass adds, such as the config's shared ones)."""
        return {k: getattr(self, k) for k in type(self)._own_fields()}

    @classmethod
    def _own_fields(cls) -> list[str]:
        base = next(c for c in cls.__mro__ if c in SCHEDULES.values())
        return [k for k in base.model_fields if k != "schedule"]


class StoreAll(ScheduleKind):
    """Tape every window in the forward pass: no recomputation, memory linear in T."""

    name: ClassVar[str] = "store_all"
    schedule: Literal["store_all"] = "store_all"

    def build(self, windows: int, costs: Costs = Costs()) -> Schedule:
        return store_all(windows)


class Uniform(ScheduleKind):
    """A local checkpoint every ``every`` windows; each segment recomputed once in backward."""

    name: ClassVar[str] = "uniform"
    schedule: Literal["uniform"] = "uniform"
    every: PositiveInt | None = None  # checkpoint interval (windows); default about sqrt(windows)

    def build(self, windows: int, costs: Costs = Costs()) -> Schedule:
        return uniform(windows, self.every or sqrt_default(windows))

    def resolved(self, windows: int, costs: Costs = Costs()) -> "Uniform":
        return self.model_copy(update={"every": self.every or sqrt_default(windows)})


class Revolve(ScheduleKind):
    """Binomial checkpointing (Griewank): the fewest recomputations with ``slots`` local checkpoints."""

    name: ClassVar[str] = "revolve"
    schedule: Literal["revolve"] = "revolve"
    slots: PositiveInt | None = None  # local checkpoint slots; default about sqrt(windows)

    def build(self, windows: int, costs: Costs = Costs()) -> Schedule:
        return revolve(windows, self.slots or sqrt_default(windows))

    def resolved(self, windows: int, costs: Costs = Costs()) -> "Revolve":
        return self.model_copy(update={"slots": self.slots or sqrt_default(windows)})


class Double(ScheduleKind):
    """Double checkpointing: an off-chip checkpoint every ``offchip_every`` windows, and within a segment
    loaded from off-chip an ``inner`` schedule with ``local_slots`` local checkpoints. Without
    ``local_slots`` every window of a segment is taped once (the fastest inner schedule)."""

    name: ClassVar[str] = "double"
    schedule: Literal["double"] = "double"
    offchip_every: PositiveInt | None = None  # interval of the off-chip checkpoints; default about sqrt(windows)
    local_slots: PositiveInt | None = None  # local slots per segment; default none (inner uniform)
    inner: Literal["revolve", "uniform"] = "revolve"  # the schedule within a segment, with local_slots

    def build(self, windows: int, costs: Costs = Costs()) -> Schedule:
        return double(windows, self.offchip_every or sqrt_default(windows), self.local_slots or 0,
                      self.inner if self.local_slots else "uniform")

    def resolved(self, windows: int, costs: Costs = Costs()) -> "Double":
        return self.model_copy(update={"offchip_every": self.offchip_every or sqrt_default(windows),
                                       "inner": self.inner if self.local_slots else "uniform"})


class TwoLevel(ScheduleKind):
    """The fastest periodic two-level schedule under the costs: off-chip checkpoints at the best interval,
    Revolve with ``local_slots`` inside each, at most ``offchip_slots`` off-chip."""

    name: ClassVar[str] = "two_level"
    schedule: Literal["two_level"] = "two_level"
    local_slots: PositiveInt | None = None  # default about sqrt(windows)
    offchip_slots: PositiveInt | None = None  # default: as many as there are windows

    def build(self, windows: int, costs: Costs = Costs()) -> Schedule:
        return two_level_optimal(windows, self.local_slots or sqrt_default(windows), self.offchip_slots or windows,
                                 costs)

    def resolved(self, windows: int, costs: Costs = Costs()) -> "TwoLevel":
        return self.model_copy(update={"local_slots": self.local_slots or sqrt_default(windows),
                                       "offchip_slots": self.offchip_slots or windows})


#: ``bptt.schedule`` name -> its class, in the order plans list them
SCHEDULES: dict[str, type[ScheduleKind]] = {cls.name: cls for cls in (StoreAll, Uniform, Revolve, Double, TwoLevel)}


def schedule_kind(name: str, **parameters) -> ScheduleKind:
    """The schedule ``name`` of the registry with ``parameters`` (a ValueError naming the known ones)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown BPTT schedule {name!r}; known: {', '.join(SCHEDULES)}")
    return SCHEDULES[name](**parameters)


__all__ = ["SCHEDULES", "Double", "Revolve", "ScheduleKind", "StoreAll", "TwoLevel", "Uniform", "schedule_kind",
           "sqrt_default"]
