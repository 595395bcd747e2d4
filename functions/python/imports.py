"""Example Python function for husk that does its work at import time: it loads a few
standard-library modules and builds a table before the first request, so a snapshot
taken at ready serves warm while a cold boot pays for the imports.

It records when its initialisation ended (CLOCK_MONOTONIC, ms since the guest kernel
started) and returns it as `init_done_monotonic_ms`: the tests compare it with the time
husk saw the ready marker. IMPORTS_INIT_SLEEP_MS (function.json env, default 0) adds a
sleep to the initialisation, to make it visibly slow.
"""

import base64
import datetime
import decimal
import hashlib
import os
import re
import statistics
import time
import uuid

WORDS = re.compile(r"[a-z]+")
TABLE = {i: hashlib.sha256(str(i).encode()).hexdigest()[:8] for i in range(2000)}
time.sleep(int(os.environ.get("IMPORTS_INIT_SLEEP_MS", "0")) / 1000)
INIT_DONE_MONOTONIC_MS = time.clock_gettime(time.CLOCK_MONOTONIC) * 1000


def handler(event):
    text = event if isinstance(event, str) else bytes(event).decode("utf-8", "replace")
    words = WORDS.findall(text.lower())
    lengths = [len(w) for w in words] or [0]
    return {
        "words": len(words),
        "mean_length": str(decimal.Decimal(statistics.mean(lengths)).quantize(decimal.Decimal("0.01"))),
        "b64": base64.b64encode(text.encode()).decode(),
        "table_entry": TABLE[len(words) % 2000],
        "id_version": uuid.UUID(int=len(words)).version,
        "epoch_year": datetime.datetime.fromtimestamp(0, datetime.timezone.utc).year,
        "init_done_monotonic_ms": INIT_DONE_MONOTONIC_MS,
    }
