"""Driving a run, with no Textual: the engine thread and its commands (controller), two engines in
lockstep, the steps kept for history, breakpoints, the headless printer, the run's command-line
options and output files, and running with the start-up heap frozen.
"""
