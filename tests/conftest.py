import os

import torch

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # a GPU box without it still runs the CUDA tests (scripts/gpu_check.sh)
    settings = None
if settings is not None:
    # Exactness runs real models: give hypothesis room, and keep CI runs repeatable.
    settings.register_profile("cbtui", deadline=None, suppress_health_check=[HealthCheck.too_slow],
                              derandomize=bool(os.environ.get("CI")))
    settings.load_profile("cbtui")

# The tiny model's ops are far too small for intra-op threads: on a small shared CPU one thread
# is many times faster than several (measured: an index gather 0.07 ms vs 3.2 ms).
torch.set_num_threads(1)

# Without a GPU, Triton kernels run through Triton's interpreter (numpy, on the CPU), so the
# decode kernel's logic is tested here too. It must be set before any kernel is defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Apps under test draw for a full-colour terminal whatever TERM the tests run under (TERM=xterm would
# make every panel use its 16-colour glyphs): tests of other colour modes set this themselves.
import textual.constants  # noqa: E402 - after the settings above, which do not depend on it

textual.constants.COLOR_SYSTEM = "truecolor"
