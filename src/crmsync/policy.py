"""Per-object sync rules that decide what the planner does with a change."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args

from crmsync.errors import ConfigError
from crmsync.model import ObjectKind

ConflictRule = Literal["newest", "crm", "groupware", "ask"]
DeleteRule = Literal["keep", "crm", "groupware", "delete"]
Operation = Literal["create", "update", "delete"]
# Which new groupware items go to the CRM (calendar): every one, only those with an
# organizer or attendee the CRM knows, or only those the user designated.
Selection = Literal["all", "matched", "designated"]

# "crm:delete" means "do not delete in the CRM"; six switches in all.
PREVENT_SWITCHES = tuple(
    f"{side}:{op}" for side in ("crm", "groupware") for op in get_args(Operation)
)


# SPEC 3: the range reaches at most 30 days back and 365 days ahead.
MAX_PAST_DAYS = 30
MAX_FUTURE_DAYS = 365


@dataclass(frozen=True)
class Policy:
    # Both sides changed the same field differently since the last sync.
    conflict: ConflictRule = "newest"
    # One side deleted the item, the other changed it since the last sync:
    # keep (recreate the deleted one from the updated one), crm / groupware (that side
    # is master), delete (the deletion wins).
    delete_vs_update: DeleteRule = "keep"
    # Operations never to perform, as "side:operation"; they override every other rule.
    prevent: frozenset[str] = field(default_factory=frozenset)
    # Mass-delete guard: a run that would delete more than this share of a side's items,
    # and more than `mass_delete_min` items, stops and asks.
    mass_delete_share: float = 0.5
    mass_delete_min: int = 10
    # The sync range, in days before and after now (calendar and tasks).
    past_days: int = 30
    future_days: int = 365

    # --- selection and record (SPEC 2 "Record", 3 "Selection mode"; calendar) -----------
    # Which groupware items not yet paired are synced to the CRM; see crmsync.selection.
    # CRM items always sync to the groupware, whatever the selection.
    selection: Selection = "all"
    # "matched": an Email field other than the main one counts too (alternate emails).
    match_alternate_emails: bool = True
    # "designated": an item carrying this category, or having this smart address among
    # its attendees (a local part matches any domain; with an '@', the whole address).
    crm_category: str = "CRM"
    smart_address: str = "crm"
    # SnapRecord: `crmsync record` may record single groupware events into the CRM.
    record: bool = True

    def window(self, now: datetime | None = None) -> tuple[datetime, datetime]:
        """The sync range as UTC datetimes [start, end)."""
        now = now or datetime.now(UTC)
        return now - timedelta(days=self.past_days), now + timedelta(days=self.future_days)

    def prevents(self, side: str, op: str) -> bool:
        return f"{side}:{op}" in self.prevent

    @classmethod
    def default_for(cls, kind: ObjectKind) -> Policy:
        # Contacts deleted in the address book should not wipe CRM contacts by default.
        return cls(prevent=frozenset({"crm:delete"})) if kind == "contacts" else cls()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["prevent"] = sorted(self.prevent)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Policy:
        names = {f.name for f in fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        kwargs = dict(values)
        if "prevent" in kwargs:
            kwargs["prevent"] = frozenset(kwargs["prevent"])
        policy = cls(**kwargs)
        policy.validate()
        return policy

    def validate(self) -> None:
        if self.conflict not in get_args(ConflictRule):
            raise ConfigError(
                f"conflict rule {self.conflict!r} is not one of {', '.join(get_args(ConflictRule))}"
            )
        if self.delete_vs_update not in get_args(DeleteRule):
            raise ConfigError(
                f"delete-vs-update rule {self.delete_vs_update!r} is not one of "
                f"{', '.join(get_args(DeleteRule))}"
            )
        bad = self.prevent - set(PREVENT_SWITCHES)
        if bad:
            raise ConfigError(
                f"unknown prevent switch(es) {', '.join(sorted(bad))}; "
                f"use {', '.join(PREVENT_SWITCHES)}"
            )
        if not 0 < self.mass_delete_share <= 1:
            raise ConfigError("mass_delete_share must be in (0, 1]")
        if self.mass_delete_min < 0:
            raise ConfigError("mass_delete_min must be >= 0")
        for name, most in (("past_days", MAX_PAST_DAYS), ("future_days", MAX_FUTURE_DAYS)):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= most:
                raise ConfigError(f"{name} must be a whole number from 0 to {most}")
        self._validate_selection()

    def _validate_selection(self) -> None:
        if self.selection not in get_args(Selection):
            raise ConfigError(f"selection {self.selection!r} is not one of "
                              f"{', '.join(get_args(Selection))}")
        for name in ("match_alternate_emails", "record"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false")
        for name in ("crm_category", "smart_address"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip() or "," in value:
                raise ConfigError(f"{name} must be a non-empty name without commas")
        if any(c.isspace() for c in self.smart_address.strip()):
            raise ConfigError("smart_address must be an address or its local part, "
                              "without spaces")
