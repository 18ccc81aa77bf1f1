"""ONNX Runtime sessions: the execution provider, and running a model on numpy arrays or, on a
GPU, on torch CUDA tensors through IO binding.

The provider is CUDA when ONNX Runtime can use it, else CPU. ``onnxruntime-gpu`` lists
``CUDAExecutionProvider`` whether or not a GPU and the CUDA libraries are present, and a
session asked for it falls back to CPU when they are missing (logging errors on the way). So
:class:`Session` asks for CUDA with ONNX Runtime's log quietened, reads back the providers the
session really has, and says in :attr:`Session.notice` (one line) when CUDA was wanted but is
not there. Nothing here fails because CUDA is missing, unless CUDA is explicitly asked for.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnxruntime as ort
    import torch

__all__ = ["CPU", "CUDA", "Device", "RuntimeSetupError", "Session", "SessionTensor"]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
Device = str  # "auto", "cpu", "cuda" or "cuda:N"

# ONNX element types (as sessions report them) -> numpy dtypes
_NUMPY_TYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


class RuntimeSetupError(Exception):
    """A session that cannot be created as asked: an unreadable model, or ``device="cuda"``
    where ONNX Runtime cannot use CUDA. The message says why."""


@dataclass(frozen=True)
class SessionTensor:
    """A model input or output: its name, numpy dtype and shape (a dimension is a number, or
    the name of a dynamic axis such as ``"batch"`` or ``"T"``, or None when unnamed)."""

    name: str
    dtype: type[np.generic]
    shape: tuple[int | str | None, ...]


def _quiet_logs() -> None:
    """Keep ONNX Runtime's own log (provider-library load failures, graph warnings) off
    stderr: what matters reaches the user as an exception or as :attr:`Session.notice`."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # fatal only: errors reach us as exceptions


def _cuda_options(device: Device, prefer_nhwc: bool, tf32: bool) -> dict[str, str]:
    # prefer_nhwc: channels-last convolutions (faster with tensor cores); use_tf32=0 keeps
    # fp32 matmuls and convolutions at full precision, as verification needs
    index = device.partition(":")[2] or "0"
    return {"device_id": index, "prefer_nhwc": str(int(prefer_nhwc)), "use_tf32": str(int(tf32))}


def gpu_present() -> bool:
    """Whether this machine shows an NVIDIA GPU at all (a device node), without loading CUDA:
    ``onnxruntime-gpu`` offers its CUDA provider on machines that have none."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


MAX_MODEL_FILE = 2**31  # protobuf's limit: a larger file is no ONNX model (read unbounded)


class Session:
    """An ONNX Runtime inference session on the best usable provider.

    ``device``: ``"auto"`` (CUDA when usable, else CPU, with :attr:`notice` set where a GPU
    is present but unusable), ``"cpu"``, or ``"cuda"`` / ``"cuda:N"`` (raise
    :class:`RuntimeSetupError` when unusable). ``threads`` sets the CPU
    thread count (ONNX Runtime's default: one per physical core). ``prefer_nhwc`` lets the
    CUDA provider run convolutions channels-last; ``tf32`` allows TF32 matmuls on GPUs that
    have them (off by default, so fp32 results match torch's on CPU). ``fp16`` says whether
    the model computes in float16 (None: look at its initializers and inputs).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        *,
        device: Device = "auto",
        threads: int | None = None,
        prefer_nhwc: bool = False,
        tf32: bool = False,
        fp16: bool | None = None,
    ) -> None:
        import onnxruntime as ort

        _quiet_logs()
        options = ort.SessionOptions()
        options.log_severity_level = 4
        if threads is not None:
            options.intra_op_num_threads = threads
        source = model if isinstance(model, bytes) else str(Path(model))
        if isinstance(source, str):
            size = 0
            with contextlib.suppress(OSError):  # a missing file: ONNX Runtime says so
                size = os.path.getsize(source)
            if size > MAX_MODEL_FILE:
                raise RuntimeSetupError(
                    f"{source} is {size:,} bytes, more than the 2 GiB an ONNX file can hold"
                )
        half = _holds_fp16(source) if fp16 is None else fp16
        # ONNX Runtime 1.31's NCHWc layout pass crashes the process on fp16 LSTMs on the CPU
        # provider; it only speeds up fp32 convolutions, so fp16 models do without it. Its
        # Pad_Fusion moves a constant Pad into the next MaxPool's pads, which pad with -inf,
        # not the Pad's value (a window of negative values then loses the padding's 0), and
        # beyond the kernel's size (which the session then refuses): no model goes through it
        disabled = ["Pad_Fusion", *(["NchwcTransformer"] if half else [])]
        # auto: CUDA only where a GPU is present, so a CPU-only machine gets no notice
        want_cuda = device != "cpu" and CUDA in ort.get_available_providers()
        want_cuda = want_cuda and (device != "auto" or gpu_present())
        session = None
        if want_cuda:
            # a CUDA provider that refuses its options or the model: CPU may still take it
            with contextlib.suppress(Exception):
                cuda = (CUDA, _cuda_options(device, prefer_nhwc, tf32))
                session = ort.InferenceSession(
                    source, options, providers=[cuda, CPU], disabled_optimizers=disabled
                )
        if session is None:
            try:
                session = ort.InferenceSession(
                    source, options, providers=[CPU], disabled_optimizers=disabled
                )
            except Exception as exc:  # ONNX Runtime raises its own Fail/InvalidGraph/... types
                raise RuntimeSetupError(
                    f"ONNX Runtime cannot load the model: {_first_line(exc)}"
                ) from None
        self._session = session
        self.on_gpu = self._session.get_providers()[0] == CUDA
        self.notice: str | None = None
        if device.startswith("cuda") and not self.on_gpu:
            raise RuntimeSetupError(
                f"device {device}: ONNX Runtime cannot use CUDA here (no GPU, or the CUDA / cuDNN "
                "libraries onnxruntime-gpu needs are missing)"
            )
        if device == "auto" and not self.on_gpu and want_cuda:
            self.notice = (
                "note: ONNX Runtime cannot use CUDA here (no GPU, or its CUDA / cuDNN libraries "
                "are missing); running on CPU"
            )
        self.inputs = [_info(arg) for arg in self._session.get_inputs()]
        self.outputs = [_info(arg) for arg in self._session.get_outputs()]
        self.metadata: dict[str, str] = dict(self._session.get_modelmeta().custom_metadata_map)

    @property
    def provider(self) -> str:
        """The provider the model runs on: ``"CUDA"`` or ``"CPU"``."""
        return "CUDA" if self.on_gpu else "CPU"

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run on host arrays (cast to each input's element type); outputs come back as host
        arrays, in the model's output order."""
        arrays = {info.name: np.asarray(feeds[info.name], dtype=info.dtype) for info in self.inputs}
        return [np.asarray(out) for out in self._session.run(None, arrays)]

    def run_bound(self, feeds: Mapping[str, torch.Tensor]) -> ort.IOBinding:
        """GPU sessions only: run on torch CUDA tensors in place (IO binding: no copy through
        the host); the outputs stay on the GPU in the returned binding
        (``binding.copy_outputs_to_cpu()`` fetches them)."""
        if not self.on_gpu:
            raise ValueError("run_bound needs a CUDA session; use run() on CPU")
        import torch

        binding = self._session.io_binding()
        keep = []  # the cast tensors must outlive the run
        for info in self.inputs:
            tensor = feeds[info.name]
            wanted = torch.from_numpy(np.empty(0, dtype=info.dtype)).dtype
            tensor = tensor.to(device="cuda", dtype=wanted).contiguous()
            keep.append(tensor)
            binding.bind_input(
                info.name,
                "cuda",
                tensor.device.index or 0,
                info.dtype,
                tuple(tensor.shape),
                tensor.data_ptr(),
            )
        for info in self.outputs:
            binding.bind_output(info.name, "cuda")
        torch.cuda.synchronize()  # the inputs are written on torch's stream
        self._session.run_with_iobinding(binding)
        return binding


def _holds_fp16(source: str | bytes) -> bool:
    """Whether a model's initializers, inputs or outputs are float16 (False when the file
    cannot be read: ONNX Runtime then says why)."""
    import onnx

    try:
        if isinstance(source, bytes):
            proto = onnx.load_model_from_string(source)
        else:
            proto = onnx.load(source, load_external_data=False)
    except Exception:  # protobuf's DecodeError, OSError: left to ONNX Runtime to report
        return False
    half = onnx.TensorProto.FLOAT16
    values = [*proto.graph.input, *proto.graph.output]
    return any(t.data_type == half for t in proto.graph.initializer) or any(
        v.type.tensor_type.elem_type == half for v in values
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _info(arg: Any) -> SessionTensor:
    dtype = _NUMPY_TYPES.get(arg.type)
    if dtype is None:
        raise RuntimeSetupError(f"{arg.name}: element type {arg.type} is not supported")
    return SessionTensor(arg.name, dtype, tuple(arg.shape))
