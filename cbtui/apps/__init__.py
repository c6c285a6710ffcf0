"""The Textual apps: the dashboard (`cbtui scenario`, `cbtui replay`), `cbtui compare` (two runs in
lockstep), and the base they share (engine_fed: an EngineController's records in, frames paced out).
Each app's stylesheet (.tcss) lies beside it. They draw with ../widgets and drive runs with ../run.
"""
