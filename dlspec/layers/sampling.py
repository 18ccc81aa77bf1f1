"""Sampling: a variational auto-encoder's reparameterisation.

``z = Reparameterize <- mu, logvar`` draws ``z = mu + exp(logvar / 2) * noise`` with fresh
standard normal noise in training, so the gradient flows to ``mu`` and ``logvar``. A sample
is random, and a model's evaluation, its ONNX export and its verification must not be: in
evaluation the layer returns the mean ``mu`` (the usual choice at inference, and what the
export holds; ``dlspec export`` says so in a notice).
"""

from dlspec.layers.base import (
    Given,
    Inferred,
    Layer,
    LayerError,
    Saved,
    TensorType,
    TorchCall,
    expect_float,
    register,
)
from dlspec.layers.layout import Layout, elementwise, empty_like
from dlspec.layers.symbolic import product

HELPER = '''class Reparameterize(nn.Module):
    """A sample mu + exp(logvar / 2) * noise in training; the mean mu in evaluation."""

    def forward(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return mu
        std = torch.exp(0.5 * logvar)
        return mu + std * torch.randn_like(std)
'''


@register
class Reparameterize(Layer):
    """A sample of a normal distribution <- mu, logvar (its log-variance), of one shape:
    ``mu + exp(logvar / 2) * noise``, noise standard normal, in training; ``mu`` in
    evaluation and in an ONNX export (which ``dlspec export`` notes). No parameters, MACs 0.
    Keeps the standard deviation and the noise where ``logvar`` requires a gradient."""

    kind = "Reparameterize"
    family = "regularization"
    arity = (2, 2)

    def infer(self, inputs: list[TensorType]) -> Inferred:
        mu, logvar = inputs
        expect_float(mu, self.kind)
        if mu != logvar:
            raise LayerError(
                "E401", f"Reparameterize takes mu and logvar of one shape, got {mu} and {logvar}"
            )
        return Inferred(mu)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall("Reparameterize", forward="{module}({x0}, {x1})", helper=HELPER)

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return self.saves_given(inputs, output, Given.plain(len(inputs)))

    def saves_given(
        self, inputs: list[TensorType], output: TensorType, given: Given
    ) -> list[Saved]:
        """``exp`` keeps its output (the deviation), and the product the noise, its other
        factor: both for ``logvar``'s gradient only."""
        if not given.needs_grad(1):
            return []
        elements = product(output.shape)
        return [Saved("std", elements), Saved("noise", elements)]

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        """Element-wise kernels all along, in training: the deviation in ``logvar``'s order,
        the noise ``empty_like`` it, and the sum in the order of ``mu`` and that product
        (a permuted ``mu`` makes a permuted sample; fuzz seed 7,003,800)."""
        mu, logvar = inputs
        std = elementwise([logvar], output.sizes)
        return elementwise([mu, elementwise([std, empty_like(std)], output.sizes)], output.sizes)

    def export_notice(self) -> str | None:
        return "exports its evaluation: the mean mu, without sampling"
