"""Memory: what a step's record says (memory.py), live device readings, profilers and the leak check."""
