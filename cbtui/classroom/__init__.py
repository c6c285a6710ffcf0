"""Teaching with the dashboard: the lessons (`cbtui lessons`, `cbtui lesson N`: a scenario paused at
the step that shows a point) and one run served to a class (`cbtui serve`: the presenter writes a
session folder, `cbtui watch` and each browser tab follow it read-only, with no engine).
"""
