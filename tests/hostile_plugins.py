"""Plugins that misbehave, loaded by tests with `--plugin hostile_plugins:NAME` (tests/ on PYTHONPATH)."""

from engine.plugins import SchedulerPlugin


class BreaksRecords(SchedulerPlugin):
    """Replaces a record's scheduled items with something no panel can draw."""

    name = "breaks_records"

    def after_step(self, state, record) -> None:
        if record.step >= 1:
            record.items = [object()]
