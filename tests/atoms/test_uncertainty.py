import numpy as np
import pytest

from emrestore.atoms.uncertainty import crlb_columns, crlb_position
from emrestore.errors import InputError


def test_closed_form_limit_without_background():
    # σ/√N for small pixels and no background
    assert crlb_position(785.0, 2.5, 0.0) == pytest.approx(2.5 / np.sqrt(785.0), rel=2e-3)
    assert crlb_position(1e4, 4.0, 0.0) == pytest.approx(4.0 / 100.0, rel=2e-3)


def test_background_and_known_nuisance():
    base = crlb_position(1000.0, 2.5, 0.0)
    assert crlb_position(1000.0, 2.5, 5.0) > 1.2 * base
    assert crlb_position(1000.0, 2.5, 5.0, nuisance=False) <= crlb_position(1000.0, 2.5, 5.0)


def test_vectorised_and_units():
    n = np.array([[100.0, 1000.0], [1e4, 1e5]])
    out = crlb_position(n, 2.5, 1.0)
    assert out.shape == (2, 2)
    assert np.all(np.diff(out.ravel()) < 0)
    single = [crlb_position(v, 2.5, 1.0) for v in n.ravel()]
    assert np.allclose(out.ravel(), single)
    assert crlb_position(1000.0, 2.5, 1.0, pixel_size_A=0.1) == pytest.approx(
        0.1 * crlb_position(1000.0, 2.5, 1.0))


def test_window_reduces_information():
    assert crlb_position(1000.0, 2.5, 1.0, window_radius_px=3.0) > crlb_position(1000.0, 2.5, 1.0)


def test_joint_bound_for_one_and_two_columns():
    one = crlb_columns([[0.0, 0.0]], 1000.0, 2.5, 1.0)
    assert one[0] == pytest.approx(crlb_position(1000.0, 2.5, 1.0), rel=1e-3)
    far = crlb_columns([[0.0, 0.0], [40.0, 0.0]], 1000.0, 2.5, 1.0)
    near = crlb_columns([[0.0, 0.0], [6.0, 0.0]], 1000.0, 2.5, 1.0)
    assert far[0, 0] == pytest.approx(one[0, 0], rel=0.02)
    assert near[0, 0] > far[0, 0]  # overlap costs precision along the pair axis


def test_invalid_inputs():
    with pytest.raises(InputError):
        crlb_position(0.0, 2.5)
    with pytest.raises(InputError):
        crlb_position(100.0, -1.0)
    with pytest.raises(InputError):
        crlb_position(100.0, 2.5, -1.0)
    with pytest.raises(InputError):
        crlb_columns([[0, 0], [5, 0]], 100.0, [2.0, 3.0], widths="same")
