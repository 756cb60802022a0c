"""lmcollapse: a benchmark harness for model collapse in language models."""

import time

__version__ = "0.1.0"
#: when this process started lmcollapse (the set-up time of a run counts from here)
STARTED = time.time()
