"""What the services refuse, as domain errors: the caller's mistake, named by the field it is in.

The services know nothing of HTTP; the edge (`gateway.http.problems`) answers each with a 422
problem+json whose `type` ends in `code` and whose `field` is the offending field.
"""

from __future__ import annotations


class Refused(Exception):
    """A request a service will not carry out as sent."""

    code = "validation"
    title = "Invalid request"
    status = 422

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class InvalidValue(Refused):
    """A value the request's schema admits but the service cannot accept (a time out of range)."""


class UnknownRecommendation(Refused):
    code = "unknown-recommendation"
    title = "Unknown recommendation"


class ItemNotInSlate(Refused):
    code = "item-not-in-slate"
    title = "Item not in slate"


class EventIdReused(Refused):
    """An outcome's event id was stored before with other content: not a retry of it."""

    code = "event-id-reused"
    title = "Event id reused"
    status = 409


class IdempotencyKeyReused(Refused):
    code = "idempotency-key-reused"
    title = "Idempotency key reused"

    def __init__(self) -> None:
        super().__init__(
            "this Idempotency-Key was sent before with a different request; use a new key for "
            "a new request",
            field="Idempotency-Key",
        )


class InvalidExperiment(Refused):
    """An experiment definition that cannot run, named by the offending field."""

    code = "invalid-experiment"
    title = "Invalid experiment"


class ExperimentConflict(Refused):
    """The name is taken, a surface is covered by another running experiment, or the experiment
    has already ended."""

    code = "experiment-conflict"
    title = "Experiment conflict"
    status = 409


class UnknownExperiment(Refused):
    code = "unknown-experiment"
    title = "Unknown experiment"
    status = 404
