"""Example Python function for husk that does its work at import time: it loads a few
standard-library modules and builds a table before the first request, so a snapshot
taken after boot serves warm while a cold boot pays for the imports.
"""

import base64
import datetime
import decimal
import hashlib
import re
import statistics
import uuid

WORDS = re.compile(r"[a-z]+")
TABLE = {i: hashlib.sha256(str(i).encode()).hexdigest()[:8] for i in range(2000)}


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
    }
