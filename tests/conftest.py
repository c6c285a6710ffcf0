import os

from hypothesis import HealthCheck, settings

# Exactness runs real models: give hypothesis room, and keep CI runs repeatable.
settings.register_profile("cbtui", deadline=None, suppress_health_check=[HealthCheck.too_slow],
                          derandomize=bool(os.environ.get("CI")))
settings.load_profile("cbtui")
