"""The results filter bar: verdict, review status, score range, source, category, search.

Every control also answers a key on the results screen (`f`, `d`, `t`, `k`, `m`, `/`,
`a`): the methods below are what those keys call.
"""

from __future__ import annotations

from dataclasses import dataclass
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.timer import Timer
from textual.validation import Number
from textual.widgets import Input, Label, Select

from libra_edge.store import Facets, ResultFilter

VERDICTS = (("all", "all"), ("flagged (不安全)", "flagged"), ("safe (安全)", "safe"), ("errors", "error"))
REVIEWS = (
    ("any decision", "any"), ("undecided", "unreviewed"), ("decided", "reviewed"),
    ("confirmed", "confirm"), ("overridden → 安全", "safe"), ("overridden → 不安全", "unsafe"),
)
ANY = "*"  # Select values cannot be None: this stands for "no constraint"
SEARCH_DELAY_S = 0.3


class ResultsFilters(Vertical):
    """Filter controls; posts `ResultsFilters.Changed` with the new `ResultFilter`."""

    DEFAULT_CSS = """
    ResultsFilters { height: auto; padding: 0 1; }
    ResultsFilters > Horizontal { height: 1; margin-bottom: 1; }
    ResultsFilters Select { width: 24; margin-right: 1; }
    ResultsFilters #verdict { width: 20; }
    ResultsFilters .score { width: 13; margin-right: 1; }
    ResultsFilters #search { width: 1fr; }
    ResultsFilters Label { padding: 0 1 0 0; color: $text-muted; }
    """

    @dataclass
    class Changed(Message):
        """The filter changed (already validated)."""

        filter: ResultFilter

    class Done(Message):
        """Enter in a text field: the screen puts the focus back on the table."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._search_timer: Timer | None = None
        self._quiet = False
        # The values of each menu, in menu order (what the cycling keys step through).
        self._values: dict[str, list[str]] = {"review": [v for _, v in REVIEWS], "source": [ANY], "category": [ANY]}

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Select(VERDICTS, value="all", allow_blank=False, compact=True, id="verdict")
            yield Select(REVIEWS, value="any", allow_blank=False, compact=True, id="review")
            yield Input(placeholder="min score", compact=True, classes="score", id="min-score",
                        validators=[Number(minimum=0, maximum=1)], valid_empty=True, restrict=r"[0-9.]*")
            yield Input(placeholder="max score", compact=True, classes="score", id="max-score",
                        validators=[Number(minimum=0, maximum=1)], valid_empty=True, restrict=r"[0-9.]*")
            yield Select([("any source", ANY)], value=ANY, allow_blank=False, compact=True, id="source")
            yield Select([("any category", ANY)], value=ANY, allow_blank=False, compact=True, id="category")
        with Horizontal():
            yield Label("search")
            yield Input(placeholder="words in question, response or analysis  (/ to focus)",
                        compact=True, id="search")

    def set_facets(self, facets: Facets) -> None:
        """Fill the source and category menus with the run's values and counts."""
        self._quiet = True  # set_options resets the value: not a user change
        try:
            self._values["source"] = [ANY, *facets.sources]
            self._values["category"] = [ANY, *facets.categories]
            self.query_one("#source", Select).set_options(
                [("any source", ANY), *((Text(f"{k} ({n})"), k) for k, n in facets.sources.items())])
            self.query_one("#category", Select).set_options(
                [("any category", ANY), *((Text(f"{k} ({n})"), k) for k, n in facets.categories.items())])
            self.query_one("#source", Select).value = ANY
            self.query_one("#category", Select).value = ANY
        finally:
            self.call_after_refresh(self._unquiet)

    def _unquiet(self) -> None:
        self._quiet = False

    def set_verdict(self, verdict: str) -> None:
        """Choose the verdict filter (the `f` key); posts Changed."""
        self.query_one("#verdict", Select).value = verdict

    def cycle(self, control: str, step: int = 1) -> str:
        """Move the menu `control` (`review`, `source`, `category`) to its next option; posts
        Changed. Returns the option's label."""
        select: Select[str] = self.query_one(f"#{control}", Select)
        values = self._values[control]
        if not values:
            return ""
        current = select.value
        index = values.index(current) if current in values else 0
        select.value = values[(index + step) % len(values)]
        return str(select.value)

    def focus_min_score(self) -> None:
        """Put the cursor in the minimum-score field (Enter returns to the table)."""
        self.query_one("#min-score", Input).focus()

    def clear_all(self) -> None:
        """Every filter back to "all" (one Changed message, not one per control)."""
        self._quiet = True
        try:
            self.query_one("#verdict", Select).value = "all"
            self.query_one("#review", Select).value = "any"
            self.query_one("#source", Select).value = ANY
            self.query_one("#category", Select).value = ANY
            for selector in ("#min-score", "#max-score", "#search"):
                self.query_one(selector, Input).value = ""
        finally:
            self.call_after_refresh(self._unquiet_and_post)

    def _unquiet_and_post(self) -> None:
        self._quiet = False
        if self._search_timer is not None:
            self._search_timer.stop()
        self._changed()

    @property
    def verdict(self) -> str:
        """The verdict filter chosen."""
        return str(self.query_one("#verdict", Select).value)

    @property
    def filter(self) -> ResultFilter:
        """The filter as the controls say (invalid score fields are ignored)."""
        review = self.query_one("#review", Select).value
        source = self.query_one("#source", Select).value
        category = self.query_one("#category", Select).value
        search = self.query_one("#search", Input).value.strip()
        return ResultFilter(
            verdict=self.verdict,  # type: ignore[arg-type]
            review=None if review == "any" else str(review),
            min_score=self._score("#min-score"),
            max_score=self._score("#max-score"),
            source=None if source == ANY else str(source),
            category=None if category == ANY else str(category),
            search=search or None,
        )

    def _score(self, selector: str) -> float | None:
        field = self.query_one(selector, Input)
        try:
            value = float(field.value)
        except ValueError:
            return None
        return value if 0.0 <= value <= 1.0 else None

    def _changed(self) -> None:
        if not self._quiet:
            self.post_message(self.Changed(self.filter))

    @on(Select.Changed)
    def _select_changed(self, event: Select.Changed) -> None:
        event.stop()
        self._changed()

    @on(Input.Changed, ".score")
    def _score_changed(self, event: Input.Changed) -> None:
        event.stop()
        if event.validation_result is None or event.validation_result.is_valid:
            self._changed()

    @on(Input.Submitted, ".score")
    def _score_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.post_message(self.Done())

    @on(Input.Changed, "#search")
    def _search_changed(self, event: Input.Changed) -> None:
        # Wait for a pause in typing: each keystroke would otherwise start a query.
        event.stop()
        if self._search_timer is not None:
            self._search_timer.stop()
        self._search_timer = self.set_timer(SEARCH_DELAY_S, self._changed)

    @on(Input.Submitted, "#search")
    def _search_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if self._search_timer is not None:
            self._search_timer.stop()
        self._changed()
        self.post_message(self.Done())

    def focus_search(self) -> None:
        """Put the cursor in the search box."""
        self.query_one("#search", Input).focus()
