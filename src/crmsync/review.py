"""The review screen of a manual sync (SPEC 2): the plan as a table, decided row by row.

A view of the plan and nothing more: what the user chooses is collected as
:class:`crmsync.plan.Decisions` and returned; :meth:`crmsync.sync.Syncer.decide` turns it
into the plan that is applied. Cancelling returns None and nothing is written.

One row per step: the CRM item on the left, the groupware item on the right, the action
between (an arrow pointing at the side that is written). Keys (the footer lists them, and
clicking one there does the same):

    up/down, click   move            space         select / unselect the row
    shift+up/down    extend the selection
    i  include       x  exclude       u  ignore until one side changes   f  ignore forever
    c  CRM wins      g  groupware wins    b  keep both (conflicts)
    o  filter by object               a  filter by action
    y  apply (shows the summary to confirm)          q, escape  cancel: write nothing

A choice applies to the selected rows, or to the row under the cursor when none is.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Footer, Header, Static

from crmsync.merge import SEP, flatten
from crmsync.plan import SIDE_NAME, WINNERS, Action, Choice, Decisions, Plan, Step
from crmsync.show import ARROWS, STYLE, review_summary

# From a Decisions to the plans it gives (Syncer.decide): for the rows and the summary.
Preview = Callable[[Decisions], list[Plan]]

ACTION_FILTERS = ("all", "create", "update", "delete", "conflict", "skip")
CHOICE_CELL = {
    "exclude": ("✗ excluded", "dim"),
    "ignore-until-change": ("⏸ ignored until a change", "blue"),
    "ignore-forever": ("⊘ ignored forever", "blue"),
}
def review(plans: Sequence[Plan], preview: Preview, title: str = "crmsync") -> Decisions | None:
    """Show the review on the terminal; the decisions once confirmed, None if cancelled."""
    return ReviewApp(plans, preview, title).run()


# --- what the screen shows (plain functions, no widgets) ------------------------------------


def action_cell(step: Step) -> Text:
    """The step's actions as arrows, coloured by operation."""
    out = Text()
    for action in step.actions:
        code = "failed" if action.failed else action.code
        if out:
            out.append(" ")
        out.append(ARROWS.get(code, code), style="red" if action.failed
                   else STYLE.get(action.op, ""))
    return out


def _short(value: Any, width: int = 60) -> str:
    text = "—" if value in (None, "", [], {}) else str(value)
    return text if len(text) <= width else text[:width - 1] + "…"


def _field_name(key: str) -> str:
    name, _, sub = key.partition(SEP)
    if name == "overrides" and sub:
        return f"occurrence {sub}"
    return {"exdates": "cancelled occurrences", "rdates": "extra occurrences",
            "rrule": "repeats"}.get(name, key)


def field_lines(step: Step, action: Action) -> list[str]:
    """The field-level difference an action makes: ``field: old -> new``; for an
    occurrence of a recurring series, its own fields that change."""
    if action.op == "conflict":
        return [f"{_field_name(k)}: CRM {_short(c)!s}  |  groupware {_short(g)!s}"
                for k, (c, g) in sorted(action.conflicts.items())]
    if action.op == "update" and action.side is not None:
        target = step.item(action.side)
        old = flatten(target.record(), {k.partition(SEP)[0] for k in action.changes}) \
            if target is not None else {}
        lines = []
        for key, new in sorted(action.changes.items()):
            before = old.get(key)
            if isinstance(new, dict) or isinstance(before, dict):
                before, new = before or {}, new or {}
                parts = [f"{f} {_short(before.get(f), 30)} -> {_short(new.get(f), 30)}"
                         for f in sorted(set(before) | set(new))
                         if _short(before.get(f)) != _short(new.get(f))]
                lines.append(f"{_field_name(key)}: " + ("; ".join(parts) or "removed"))
            else:
                lines.append(f"{_field_name(key)}: {_short(before)} -> {_short(new)}")
        return lines
    if action.op == "create" and action.side is not None:
        from crmsync.connectors.base import other

        source = step.item(other(action.side))
        if source is None:
            return []
        values = source.record().fields()
        return [f"{_field_name(k)}: — -> {_short(v)}" for k, v in values.items()
                if v not in (None, "", [], {}, False) and k != "uid"]
    return []


def detail_text(kind: str, step: Step) -> Text:
    text = Text()
    for side in ("crm", "groupware"):
        item = step.item(side)  # type: ignore[arg-type]
        text.append(f"{SIDE_NAME[side]}: ", style="bold")
        text.append(f"{item.label()}  ({item.id})\n" if item else "—\n")
    for action in step.actions:
        code = "failed" if action.failed else action.code
        op, _, side = code.partition(":")
        where = f" in {SIDE_NAME[side]}" if side in SIDE_NAME else ""
        text.append(f"\n{kind}: {op}{where}", style=STYLE.get(action.op, "bold"))
        if action.reason:
            text.append(f"  {action.reason}", style="dim")
        text.append("\n")
        for note in action.lossy:
            text.append(f"  not kept: {note}\n", style="yellow")
        for line in field_lines(step, action):
            text.append(f"  {line}\n")
    return text


def summary(plans: Sequence[Plan], decisions: Decisions) -> str:
    """ "12 creates in CRM, 3 updates in groupware, 1 delete in groupware; 2 excluded" """
    # Excluded and ignored steps are skips: counted from the decisions.
    totals: dict[str, int] = defaultdict(int)
    for plan in plans:
        for code, n in plan.counts().items():
            totals[code] += n
    return review_summary(totals, decisions.choices.values())


# --- the screens ------------------------------------------------------------------------------


class ConfirmScreen(ModalScreen[bool]):
    """The summary of what will be written; apply or go back."""

    BINDINGS = [Binding("y", "answer(True)", "apply"),
                Binding("n,escape", "answer(False)", "back")]

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm"):
            yield Static(f"{self.text} ... apply?", id="summary")
            with Horizontal():
                yield Button("Apply (y)", variant="primary", id="apply")
                yield Button("Back (n)", id="back")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "apply")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class ReviewApp(App[Decisions | None]):
    """The plan as a table; :attr:`decisions` is what the user chose so far."""

    CSS = """
    DataTable { height: 2fr; }
    #detail { height: 1fr; border-top: solid $accent; padding: 0 1; overflow-y: auto; }
    #filters { height: 1; padding: 0 1; color: $text-muted; }
    ConfirmScreen { align: center middle; }
    #confirm { width: 80%; height: auto; border: thick $accent; padding: 1 2;
               background: $surface; }
    #confirm Horizontal { height: auto; margin-top: 1; }
    #confirm Button { margin-right: 2; }
    """
    BINDINGS = [
        # Apply and cancel first: the footer shows as many as the width allows.
        Binding("y", "confirm", "apply…"),
        Binding("q,escape", "cancel", "cancel"),
        Binding("space", "toggle", "select"),
        Binding("shift+down", "extend(1)", "extend", show=False),
        Binding("shift+up", "extend(-1)", "extend", show=False),
        Binding("i", "choose('include')", "include"),
        Binding("x", "choose('exclude')", "exclude"),
        Binding("u", "choose('ignore-until-change')", "ignore till change"),
        Binding("f", "choose('ignore-forever')", "ignore forever"),
        Binding("c", "choose('crm')", "CRM wins"),
        Binding("g", "choose('groupware')", "groupware wins"),
        Binding("b", "choose('both')", "keep both"),
        Binding("o", "filter_object", "object"),
        Binding("a", "filter_action", "action"),
    ]

    def __init__(self, plans: Sequence[Plan], preview: Preview, title: str = "crmsync") -> None:
        super().__init__()
        self.plans = list(plans)
        self.preview = preview
        self.title = title
        self.decisions = Decisions()
        self.selected: set[str] = set()
        self.kinds = ["all"] + [p.kind for p in self.plans if p.steps]
        self.object_filter = "all"
        self.action_filter = "all"
        # Every step by key, with its object, in plan order.
        self.steps: dict[str, tuple[str, Step]] = {
            s.key: (p.kind, s) for p in self.plans for s in p.steps}
        self.shown: list[str] = []
        self._decided: dict[str, Step] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="filters")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="rows")
        yield Static(id="detail")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for label in ("", "object", "CRM", "action", "groupware"):
            table.add_column(label, key=label or "mark")
        self.refresh_rows()
        table.focus()

    # --- rows ---------------------------------------------------------------------------

    def _visible(self, kind: str, step: Step) -> bool:
        if self.object_filter != "all" and kind != self.object_filter:
            return False
        return self.action_filter == "all" or any(
            a.op == self.action_filter for a in step.actions)

    def refresh_rows(self) -> None:
        """Rebuild the table from the plans and the decisions, keeping the cursor's row."""
        table = self.query_one(DataTable)
        current = self.current_key()
        self._decided = {s.key: s for p in self.preview(self.decisions) for s in p.steps}
        table.clear()
        self.shown = [k for k, (kind, step) in self.steps.items() if self._visible(kind, step)]
        for key in self.shown:
            kind, step = self.steps[key]
            table.add_row(*self._cells(key, kind, step), key=key)
        if current in self.shown:
            table.move_cursor(row=self.shown.index(current))
        self.query_one("#filters", Static).update(
            f"object: {self.object_filter} (o)   action: {self.action_filter} (a)   "
            f"{len(self.shown)} of {len(self.steps)} rows   selected: {len(self.selected)}")
        self.show_detail()

    def _cells(self, key: str, kind: str, step: Step) -> list[Any]:
        choice = self.decisions.get(key)
        if choice in CHOICE_CELL:
            label, style = CHOICE_CELL[choice]
            action = Text(label, style=style)
        elif choice in WINNERS:
            action = action_cell(self._decided.get(key, step))
            action.append("  (both kept)" if choice == "both"
                          else f"  ({SIDE_NAME[choice]} wins)", style="magenta")
        else:
            action = action_cell(step)
        return [Text("●" if key in self.selected else " ", style="bold cyan"), kind,
                step.crm.label() if step.crm else "", action,
                step.gw.label() if step.gw else ""]

    def current_key(self) -> str | None:
        table = self.query_one(DataTable)
        if not self.shown or not 0 <= table.cursor_row < len(self.shown):
            return None
        return self.shown[table.cursor_row]

    def show_detail(self) -> None:
        key = self.current_key()
        detail = self.query_one("#detail", Static)
        if key is None:
            detail.update("Nothing to review with these filters." if self.steps
                          else "Nothing to do.")
            return
        kind, step = self.steps[key]
        text = detail_text(kind, step)
        choice = self.decisions.get(key)
        if choice != "include":
            decided = self._decided.get(key)
            text.append(f"\nyour choice: {choice}\n", style="bold")
            if decided is not None and choice in WINNERS:
                text.append(detail_text(kind, decided))
        detail.update(text)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_detail()

    # --- actions ------------------------------------------------------------------------

    def _targets(self) -> list[str]:
        chosen = [k for k in self.shown if k in self.selected]
        current = self.current_key()
        return chosen or ([current] if current else [])

    def action_toggle(self) -> None:
        key = self.current_key()
        if key is not None:
            self.selected ^= {key}
            self.refresh_rows()

    def action_extend(self, step: int) -> None:
        table = self.query_one(DataTable)
        key = self.current_key()
        if key is None:
            return
        self.selected.add(key)
        row = max(0, min(len(self.shown) - 1, table.cursor_row + step))
        self.selected.add(self.shown[row])
        table.move_cursor(row=row)
        self.refresh_rows()

    def action_choose(self, choice: Choice) -> None:
        targets = self._targets()
        if choice in WINNERS:
            # A winner only means something for a conflict.
            targets = [k for k in targets
                       if any(a.op == "conflict" for a in self.steps[k][1].actions)]
            if not targets:
                self.notify("Pick a side only for a conflict.", severity="warning")
                return
        self.decisions.set(targets, choice)
        self.selected.clear()
        self.refresh_rows()

    def action_filter_object(self) -> None:
        self.object_filter = self.kinds[(self.kinds.index(self.object_filter) + 1)
                                        % len(self.kinds)]
        self.refresh_rows()

    def action_filter_action(self) -> None:
        self.action_filter = ACTION_FILTERS[(ACTION_FILTERS.index(self.action_filter) + 1)
                                            % len(ACTION_FILTERS)]
        self.refresh_rows()

    def action_confirm(self) -> None:
        text = summary(self.preview(self.decisions), self.decisions)

        def done(yes: bool | None) -> None:
            if yes:
                self.exit(self.decisions)

        self.push_screen(ConfirmScreen(text), done)

    def action_cancel(self) -> None:
        self.exit(None)
