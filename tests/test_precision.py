"""``training.precision: bf16`` is used only where the hardware supports it, and says so otherwise."""

from __future__ import annotations

import pytest

from distill import env
from distill.config import TrainingConfig
from distill.train import resolve_precision


def with_flags(monkeypatch, flags):
    monkeypatch.setattr(env, "host_info", lambda: {"cpu_flags": flags})
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)


def test_fp32_is_the_default_and_never_autocasts():
    assert TrainingConfig().precision == "fp32"
    assert resolve_precision("fp32") == (False, "fp32")


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_bf16_on_a_cpu_that_supports_it(monkeypatch, flag):
    with_flags(monkeypatch, ["avx2", flag])
    use, note = resolve_precision("bf16")
    assert use and flag in note


def test_bf16_falls_back_to_fp32_with_a_reason(monkeypatch):
    with_flags(monkeypatch, ["avx2", "fma"])
    use, note = resolve_precision("bf16")
    assert not use
    assert note.startswith("fp32: bf16 was requested but this CPU has neither AVX512-BF16 nor AMX-BF16")
    assert "avx2, fma" in note


def test_unknown_precision_is_a_config_error():
    with pytest.raises(ValueError, match="'fp32' or 'bf16'"):
        TrainingConfig(precision="fp16")
