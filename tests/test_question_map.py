"""scenarios/README.md maps the seed's 32 questions to commands and tests: the scenarios, commands,
test files and test functions it names exist (a renamed test or scenario breaks the map here)."""

import re
from pathlib import Path

from cbtui.cli import main
from scenarios import builtin_names

ROOT = Path(__file__).parent.parent


def rows():
    text = (ROOT / "scenarios" / "README.md").read_text(encoding="utf-8")
    return [line.split(" | ") for line in text.splitlines() if re.match(r"\| \d+ \| ", line)]


def test_the_map_has_every_question_once():
    numbers = [int(row[0].strip("| ")) for row in rows()]
    assert numbers == list(range(1, 33))


def test_every_scenario_command_and_test_it_names_exists():
    commands = set(main.commands)
    for row in rows():
        command, checked = row[2], row[3]
        for name in re.findall(r"cbtui scenario (\w+)", command) + re.findall(r"`(\w+)` \(", command):
            assert name in builtin_names() or name in ("no_priority", "fixed"), (row[0], name)
        for sub in re.findall(r"`cbtui (\w+)", command):
            assert sub in commands, (row[0], sub)
        for file, functions in re.findall(r"(test_\w+\.py)((?:::\w+|, ::\w+)*)", checked):
            path = ROOT / "tests" / file
            assert path.is_file(), (row[0], file)
            source = path.read_text(encoding="utf-8")
            for function in re.findall(r"::(\w+)", functions):
                assert f"def {function}(" in source, (row[0], file, function)
