"""Progress bars for the converter's long steps: edgegemma.progress's bars on stderr when asked for,
else a bar that counts silently (a library call, a test), so each step is written once either way."""
from __future__ import annotations

from contextlib import AbstractContextManager


def bar(desc: str, total: int, unit: str, shown: bool) -> AbstractContextManager:
    """A tqdm bar over `total` `unit`s for a `with` block; on stderr when `shown`."""
    if shown:
        from edgegemma import progress

        return progress.bar(desc, total=total, unit=unit, unit_scale=total >= 1000)  # 25.7k tok, but 2/3 step
    from tqdm import tqdm

    return tqdm(total=total, disable=True)
