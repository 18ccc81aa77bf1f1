"""What depends on the machine can be forced, so the suite runs as on any CPU: with
``DLSPEC_NATIVE_BF16=0`` image models train in fp32 as on a CPU without AVX512-BF16 / AMX
(``DLSPEC_NATIVE_BF16=0 make test`` runs the whole suite so)."""

from __future__ import annotations

import pytest
import torch

from dlspec.train.loop import autocast_dtype, cpu_has_native_bf16


@pytest.mark.parametrize(("forced", "dtype"), [("0", None), ("1", torch.bfloat16)])
def test_native_bf16_detection_can_be_forced(
    monkeypatch: pytest.MonkeyPatch, forced: str, dtype: torch.dtype | None
) -> None:
    monkeypatch.setenv("DLSPEC_NATIVE_BF16", forced)
    assert cpu_has_native_bf16() is (forced == "1")
    assert autocast_dtype("auto", torch.device("cpu"), images=True) == dtype
    assert autocast_dtype("auto", torch.device("cpu"), images=False) is None


def test_without_the_override_the_cpu_is_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DLSPEC_NATIVE_BF16", raising=False)
    assert isinstance(cpu_has_native_bf16(), bool)
