"""The one error type the scenario package raises for bad input."""


class ScenarioError(ValueError):
    """A scenario that cannot be loaded or built.

    The message is one line: the file, the key, what is wrong and what is allowed. The CLI prints
    it as `cbtui: error: ...` and exits with code 2.
    """
