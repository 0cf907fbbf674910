"""model.rope_table computes its rows as far as the positions asked for; any row, in any order of asking, is the
float64 cos / sin of position x frequency rounded to float32, as the whole table at once gives it."""
from __future__ import annotations

import numpy as np
import pytest

from edgegemma.model import rope_table


def whole_table(base: float, head_dim: int, max_positions: int) -> tuple[np.ndarray, np.ndarray]:
    inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.arange(max_positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


@pytest.mark.parametrize("base", [10_000.0, 1_000_000.0])
def test_rows_equal_the_whole_table_however_they_grow(base):
    cos_ref, sin_ref = whole_table(base, 256, 2048)
    cos, sin = rope_table(base, 256, 2048)
    asks = [np.arange(7), np.array([3, 0]), np.arange(60, 200), np.array([1500, 2]), np.array([], np.int64),
            np.arange(2048), np.array([2047])]
    for positions in asks:
        assert np.array_equal(cos[positions], cos_ref[positions]), positions
        assert np.array_equal(sin[positions], sin_ref[positions]), positions
    assert len(cos) == 2048


def test_a_position_past_the_context_is_an_index_error():
    cos, _ = rope_table(10_000.0, 8, 16)
    with pytest.raises(IndexError):
        cos[np.array([16])]
