"""Memory: what a step's record says (memory.py), live device readings (one NVML wrapper, nvml.py),
profilers and the leak check."""
