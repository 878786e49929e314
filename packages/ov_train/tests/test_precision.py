"""The dtype policy: bf16 autocast on CUDA, fp32 on CPU, overridable; device resolution."""

import pytest
import torch

from ov_train.errors import TrainingError
from ov_train.precision import autocast_dtype, autocast_factory, resolve_device

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_is_bf16_on_cuda_and_fp32_on_cpu():
    assert autocast_dtype("auto", CUDA) is torch.bfloat16
    assert autocast_dtype("auto", CPU) is None
    assert autocast_dtype("fp32", CUDA) is None
    assert autocast_dtype("bf16", CPU) is torch.bfloat16


def test_forced_bf16_autocasts_matmuls_on_cpu_and_fp32_does_not():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast_factory("bf16", CPU)():
        assert (a @ b).dtype is torch.bfloat16
    with autocast_factory("auto", CPU)():
        assert (a @ b).dtype is torch.float32


def test_device_resolution():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto") == (CUDA if torch.cuda.is_available() else CPU)
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="CUDA is not available"):
            resolve_device("cuda:0")
