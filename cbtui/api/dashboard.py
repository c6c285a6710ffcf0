"""The dashboard as `cbtui api` shows it: a run with nothing left to do is idle, waiting for
clients, not finished (the next request runs it again)."""

from __future__ import annotations

from ..apps.dashboard import DashboardApp


class ApiDashboard(DashboardApp):
    def run_state(self) -> str:
        state = super().run_state()
        return "idle" if state == "finished" else state
