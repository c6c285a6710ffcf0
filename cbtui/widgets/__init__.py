"""Dashboard panels, one per module; each renders from a StepRecord (or a memory reading)."""
