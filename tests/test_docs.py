"""The README says what the code declares: its event list is the declared event types."""

import pathlib
import re

from handlers.services.event_types import EVENT_TYPES

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_lists_exactly_the_declared_event_types():
    text = README.read_text(encoding="utf-8")
    start = text.index("An event is `{")
    paragraph = text[start : text.index("You only receive what", start)]
    listed = re.findall(r"`([a-z]+(?:\.[a-z_]+)+)`", paragraph)
    assert sorted(listed) == sorted(EVENT_TYPES)
    assert len(listed) == len(set(listed))
