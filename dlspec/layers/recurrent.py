"""Recurrent layers: RNN, LSTM, GRU over batch-first sequences ``[T, F]``.

What a recurrent layer passes on is chosen by ``returns``:

* ``"sequence"`` (default): every step's output of the last layer, ``[T, H * dirs]``;
* ``"last"``: the output at the last time step, ``[H * dirs]`` (for a bidirectional layer the
  reverse half has then seen only that one step, as in torch's ``output[:, -1]``);
* ``"hidden"``: the final hidden state ``h_n`` of the last layer, both directions
  concatenated, ``[H * dirs]`` (the reverse half has seen the whole sequence).

``H`` is ``hidden_size`` (``proj_size`` for an LSTM with a projection) and ``dirs`` is 2 when
``bidirectional``. Layout, as torch names it, per layer ``l`` and direction (suffix
``_reverse`` for the backward one), with ``G`` gates (RNN 1, GRU 3, LSTM 4):
``weight_ih_l{l} (G*hidden, in_l)``, ``weight_hh_l{l} (G*hidden, H)``, and when ``bias``
``bias_ih_l{l}``, ``bias_hh_l{l}`` ``(G*hidden,)``; an LSTM with ``proj_size`` adds
``weight_hr_l{l} (proj_size, hidden)``. ``in_0`` is the input's feature size, ``in_l`` for
deeper layers is ``H * dirs``.

MACs per sample = T x dirs x the sum over layers of
``G*hidden x (in_l + H)`` (the two matrix products) ``+ 2 x G*hidden`` (one per element of
each of the two bias vectors, when ``bias``) ``+ proj_size x hidden`` (the projection). The
gates' nonlinearities and the element-wise products of the cell update are not counted.
"""

from typing import Annotated, ClassVar, Literal

from dlspec.layers.base import (
    Given,
    Inferred,
    Layer,
    LayerError,
    Pos,
    Saved,
    Shape,
    TensorType,
    TorchCall,
    check_given,
    concrete,
    expect_float,
    expect_rank,
    register,
    saved_input,
)
from dlspec.layers.layout import BATCH as STAND_IN
from dlspec.layers.layout import (
    Layout,
    contiguous,
    permute,
    reshape,
    slice_of,
    time_major,
)
from dlspec.layers.symbolic import Dim, product
from dlspec.structs import replace
from dlspec.validation import Field

Returns = Literal["sequence", "last", "hidden"]


# oneDNN starts each part of an RNN's workspace on a fresh page of this many bytes
PAGE = 4096
WORKSPACE_PARTS = 7  # of an LSTM's (onednn_workspace)


def _leading(floats: int) -> int:
    """oneDNN's leading dimension for rows of ``floats`` floats: rounded up to 64 bytes, and
    64 bytes more when a multiple of 1 KiB (to avoid 4K aliasing)."""
    ld = -(-floats // 16) * 16
    return ld + 16 if ld % 256 == 0 else ld


def onednn_workspace(steps: Dim, width: int, hidden: int) -> list[Saved]:
    """The workspace oneDNN's LSTM keeps for backward, for one layer and direction (torch
    calls it once per each) over ``steps`` steps of input ``width``: the gates (4 x hidden)
    and the output h of each step, then 5 arrays over steps + 1 positions of 2 layers (its
    input and output): the states and the gradients of the layer and recurrent states
    (rows of max(width, hidden), padded), the c states and their gradients (rows of
    hidden). Each of these 7 parts starts on a fresh page (:data:`PAGE`): counted as one
    page more per part, so the figure is above the real one by at most ``WORKSPACE_PARTS``
    pages, and exact otherwise."""
    rows = _leading(max(width, hidden))
    positions = 2 * (steps + 1)
    floats = steps * (_leading(4 * hidden) + _leading(hidden))
    floats = floats + positions * (3 * rows + 2 * hidden)
    return [
        Saved("workspace", 4 * floats, "byte"),
        Saved("workspace_pages", WORKSPACE_PARTS * PAGE, "byte", batched=False),
    ]


class _Recurrent(Layer):
    """Shared rule of RNN, LSTM and GRU (see the module docstring)."""

    family = "recurrent"
    positional = ("hidden_size",)
    gates: ClassVar[int]
    state: ClassVar[str]  # how ``h_n`` is reached in the module's output tuple

    hidden_size: Pos
    num_layers: Pos = 1
    bias: bool = True
    bidirectional: bool = False
    dropout: Annotated[float, Field(ge=0, le=1)] = 0.0
    input_size: Pos | None = None
    returns: Returns = "sequence"

    def copies(self) -> int:
        return self.num_layers * (2 if self.bidirectional else 1)

    def _width(self) -> int:
        """Per-direction size of the output and of the recurrent state ``H``."""
        return self.hidden_size

    def _step(self, n_in: int) -> tuple[dict[str, Shape], int]:
        """One layer and direction: its tensors (unsuffixed names) and MACs per time step."""
        gates = self.gates * self.hidden_size
        width = self._width()
        weights: dict[str, Shape] = {"weight_ih": (gates, n_in), "weight_hh": (gates, width)}
        macs = gates * (n_in + width)
        if self.bias:
            weights |= {"bias_ih": (gates,), "bias_hh": (gates,)}
            macs += 2 * gates
        if width != self.hidden_size:
            weights["weight_hr"] = (width, self.hidden_size)
            macs += width * self.hidden_size
        return weights, macs

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        expect_rank(x, (2,), "[T, F] (batch-first sequence)", self.kind)
        expect_float(x, self.kind)
        if self.dropout and self.num_layers == 1:
            raise LayerError(
                "E204",
                f"dropout={self.dropout} has no effect with num_layers=1: torch applies it "
                "between stacked layers only",
                ["add a Dropout layer after this one instead"],
                arg="dropout",
            )
        n_in = check_given(self.input_size, x.shape[1], "input_size", self.kind, "features")
        dirs = 2 if self.bidirectional else 1
        weights: dict[str, Shape] = {}
        per_step = 0
        for layer in range(self.num_layers):
            step_weights, step_macs = self._step(n_in if layer == 0 else self._width() * dirs)
            for suffix in ("", "_reverse")[:dirs]:
                weights |= {f"{k}_l{layer}{suffix}": v for k, v in step_weights.items()}
                per_step += step_macs
        steps: Dim = x.shape[0]
        out = self._width() * dirs
        shape = (steps, out) if self.returns == "sequence" else (out,)
        return Inferred(TensorType(shape), weights, macs=steps * per_step)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        kwargs = self.keywords(exclude={"hidden_size", "input_size", "returns"})
        kwargs["batch_first"] = True
        if self.returns == "sequence":
            forward = "{module}({x})[0]"  # (B, T, H*dirs)
        elif self.returns == "last":
            forward = "{module}({x})[0][:, -1]"  # (B, H*dirs)
        elif self.bidirectional:
            forward = "{module}({x})" + self.state + "[-2:].transpose(0, 1).flatten(1)"
        else:
            forward = "{module}({x})" + self.state + "[-1]"  # (B, H)
        return TorchCall(
            f"nn.{self.kind}", (inputs[0].shape[1], self.hidden_size), kwargs, forward=forward
        )

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return self.saves_given(inputs, output, Given.plain(1))

    def saves_given(
        self, inputs: list[TensorType], output: TensorType, given: Given
    ) -> list[Saved]:
        """torch runs the layers one after another, each direction on its own; per layer and
        direction it keeps what :meth:`_cell` says, and each layer's input as
        :meth:`_layer_inputs` says (the input itself when it says none for the first)."""
        steps = inputs[0].shape[0]
        in_order = steps == 1 or self._in_order(given)  # the input is time-major already
        n_in = concrete(inputs[0].shape[1], "input_size")
        dirs = 2 if self.bidirectional else 1
        saved = []
        for layer in range(self.num_layers):
            width = n_in if layer == 0 else self._width() * dirs
            copies = self._layer_inputs(layer, dirs, in_order)
            saved += [Saved(f"input_l{layer}_{i}", steps * width) for i in range(copies)]
            if layer == 0 and not copies:
                saved.append(saved_input(inputs))
            if layer and self.dropout:  # the dropout's scaled mask
                saved.append(Saved(f"dropout_l{layer}", steps * width))
            for d in range(dirs):
                saved += [
                    replace(s, tensor=f"{s.tensor}_l{layer}_{d}") for s in self._cell(steps, width)
                ]
        return saved

    def backward_buffers(self, inputs: list[TensorType], output: TensorType) -> Dim:
        """The gradient of every step's gates, both directions of a layer at once (the
        layers run their backward one after another)."""
        dirs = 2 if self.bidirectional else 1
        return dirs * inputs[0].shape[0] * self.gates * self.hidden_size

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        """torch runs batch-first layers time-major: the sequence it returns is a transposed
        view (the last step and the states are rows of their own)."""
        return time_major(output.sizes) if self.returns == "sequence" else output

    def output_storage(self, inputs: list[TensorType], output: TensorType) -> Dim:
        return self.output_storage_at(inputs, output, STAND_IN)

    def output_storage_at(self, inputs: list[TensorType], output: TensorType, batch: int) -> Dim:
        """``returns="last"`` views the last step of the output sequence; ``"hidden"`` views
        ``h_n``, the final state of every layer and direction, where the last layer's
        states are a view of it (:meth:`_views_states`), else they are a copy."""
        if self.returns == "last":
            return inputs[0].shape[0] * product(output.shape)
        if self.returns == "hidden" and self._views_states(batch):
            return self.copies() * self._width()
        return product(output.shape)

    def _views_states(self, batch: int) -> bool:
        """Whether the last layer's final states, ``h_n[-1]`` or the two directions' side by
        side (``h_n[-2:].transpose(0, 1).flatten(1)``), view ``h_n`` (layers x directions,
        B, H): one direction's always do, two directions' where the strides let the flatten
        view them (a batch of one, or H of one)."""
        if not self.bidirectional:
            return True
        states = contiguous((self.copies(), batch, self._width()))
        last = permute(slice_of(states, 0, 2, 1), (1, 0, 2))
        return not reshape(last, (batch, 2 * self._width())).copied

    def _in_order(self, given: Given) -> bool:
        """Whether the first layer reads the input in place: its time-major transpose reads
        as rows (a view, perhaps of a larger storage, which it then keeps)."""
        return given.rows(0)

    def _layer_inputs(self, layer: int, dirs: int, in_order: bool) -> int:
        """Copies of a layer's input sequence kept: each direction copies the first layer's
        input to time-major order (no copy when it is ``in_order``: time-major already);
        deeper layers read the previous one's output (after the dropout, when there is one,
        a tensor of its own)."""
        if layer == 0:
            return 0 if in_order else dirs
        return 1

    def _cell(self, steps: Dim, width: int) -> list[Saved]:
        """What one layer and direction keeps for ``steps`` steps of input ``width``."""
        raise NotImplementedError

    def label(self) -> str:
        parts = [str(self.hidden_size)]
        if self.num_layers != 1:
            parts.append(f"layers={self.num_layers}")
        if self.bidirectional:
            parts.append("bidirectional")
        if self.returns != "sequence":
            parts.append(self.returns)
        return f"{self.kind}({', '.join(parts)})"


@register
class RNN(_Recurrent):
    """Elman RNN, ``h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`` (or ReLU): one gate.
    ``[T, F]`` -> ``[T, H*dirs]``, or ``[H*dirs]`` with ``returns="last"``/``"hidden"``; layout
    and MACs in the module docstring (G = 1)."""

    kind = "RNN"
    gates = 1
    state = "[1]"

    nonlinearity: Literal["tanh", "relu"] = "tanh"

    def _cell(self, steps: Dim, width: int) -> list[Saved]:
        return [Saved("states", (steps + 1) * self.hidden_size)]  # every output, and h_0


@register
class LSTM(_Recurrent):
    """Long short-term memory with input, forget, cell and output gates (G = 4).
    ``[T, F]`` -> ``[T, H*dirs]``, or ``[H*dirs]`` with ``returns="last"``/``"hidden"``, where
    ``H`` is ``proj_size`` when given (it must be smaller than ``hidden_size``), else
    ``hidden_size``; layout and MACs in the module docstring."""

    kind = "LSTM"
    gates = 4
    state = "[1][0]"

    proj_size: Annotated[int, Field(ge=0)] = 0

    def _width(self) -> int:
        return self.proj_size or self.hidden_size

    def infer(self, inputs: list[TensorType]) -> Inferred:
        if self.proj_size >= self.hidden_size:
            raise LayerError(
                "E204",
                f"proj_size={self.proj_size} must be smaller than hidden_size={self.hidden_size}",
                arg="proj_size",
            )
        return super().infer(inputs)

    def _cell(self, steps: Dim, width: int) -> list[Saved]:
        """With ``proj_size`` torch's own per-step kernel keeps the previous state, the 4
        gates and 3 more vectors of ``hidden_size`` per step. Without, CPU torch runs oneDNN:
        the output sequence, the initial and final h and c, and oneDNN's workspace
        (:func:`onednn_workspace`)."""
        h = self.hidden_size
        if self.proj_size:
            return [Saved("steps", steps * (self.proj_size + 7 * h))]
        return [Saved("states", steps * h + 4 * h), *onednn_workspace(steps, width, h)]

    def saved_slack(self) -> int:
        """oneDNN's workspace is counted with a whole page more per part (see
        :func:`onednn_workspace`)."""
        return 0 if self.proj_size else self.copies() * WORKSPACE_PARTS * PAGE

    def _in_order(self, given: Given) -> bool:
        """oneDNN reads only a contiguous time-major input in place (the native path, with
        projections, reads rows as the other kinds do)."""
        return given.rows(0) if self.proj_size else given.time_major(0)

    def _layer_inputs(self, layer: int, dirs: int, in_order: bool) -> int:
        if self.proj_size:
            return super()._layer_inputs(layer, dirs, in_order)
        # oneDNN: both directions read one time-major copy of the input (or the input
        # itself, when in order); a deeper layer
        # reads the previous layer's output, a new tensor only when two directions are
        # concatenated (or a dropout follows)
        if layer == 0:
            return 0 if in_order else 1
        return 1 if self.dropout else dirs - 1


@register
class GRU(_Recurrent):
    """Gated recurrent unit with reset, update and new gates (G = 3). ``[T, F]`` ->
    ``[T, H*dirs]``, or ``[H*dirs]`` with ``returns="last"``/``"hidden"``; layout and MACs in
    the module docstring."""

    kind = "GRU"
    gates = 3
    state = "[1]"

    def _cell(self, steps: Dim, width: int) -> list[Saved]:
        # per step: the previous state, the recurrent projection (3H) and 3 gate vectors
        return [Saved("steps", steps * 7 * self.hidden_size)]
