"""`cbtui api`'s command line: loopback or not (the warning's rule), and bad combinations refused
in one line with exit 2 before anything listens."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cbtui.api.server import is_loopback
from cbtui.cli import main


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.9.9.9", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("::", False),
                                            ("192.168.1.5", False), ("example.org", False)])
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("args, words", [
    (["--headless", "--paused"], "--paused holds the dashboard"),
    (["--headless", "--break-on", "finish"], "--break-on pauses the dashboard"),
    (["--port", "70000"], "70000 is not in the range"),
    (["--headless", "--host", "no-such-host.invalid"], "--host no-such-host.invalid: not an address"),
    (["no_such_scenario", "--headless"], "unknown scenario 'no_such_scenario'"),
])
def test_bad_command_lines_are_one_line_and_exit_2(args, words):
    done = CliRunner().invoke(main, ["api", *args])
    assert done.exit_code == 2 and words in done.output and done.output.count("\n") == 1
