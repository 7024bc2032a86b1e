"""Fixtures of the recorder's tests."""
import pytest

from dynamics.record import kernels


@pytest.fixture(params=["grouped", "alone"])
def cache_blocking(request, monkeypatch):
    """Runs a test twice on a CPU: with the default split (the small tensors of the test models all go
    through the multi-tensor kernels) and with every tensor measured alone, as the large tensors of a real
    model are (see :class:`dynamics.record.kernels.SavedUpdate`)."""
    if request.param == "alone":
        monkeypatch.setattr(kernels, "CACHE_BLOCK_MIN", 1)
    return request.param
