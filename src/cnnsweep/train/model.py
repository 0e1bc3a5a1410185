"""The convolutional network family, the contract every model keeps, and the parameter budget.

One class covers the seed network and the variants sweeps explore: the layer layout, the
convolution widths, dropout and the head are constructor arguments. Any other `nn.Module` named by
`_target_` in a model config trains too, if it keeps the contract (`check_outputs`): a float batch
N x C x H x W in, logits N x classes out (PyTorch's convention: cross-entropy is applied to them).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from cnnsweep.errors import RUN_TARGETS, UserError, make
from cnnsweep.records import RunStatus

log = logging.getLogger(__name__)

# layout token -> (kernel size, padding). Every convolution is followed by BatchNorm, ReLU, Dropout.
CONV_TOKENS = {
    "conv": (3, 1),  # 3x3, keeps the spatial size
    "conv_valid": (3, 0),  # 3x3 without padding: shrinks each side by 2
    "conv1x1": (1, 0),  # pointwise: mixes channels, keeps the spatial size
}
POOL_TOKEN = "pool"  # 2x2 max pooling, stride 2
HEADS = ("flatten", "gap")  # flatten: Linear over C*H*W; gap: global average pool, then Linear over C


class ConvNet(nn.Module):
    """Conv blocks and 2x2 max pools in the order `layout` gives, then a linear classifier.

    `widths` holds the output channels of each convolution in layout order. The forward pass
    returns logits (the model contract above). With dropout 0 the blocks hold no dropout layer.
    """

    def __init__(
        self,
        widths: Sequence[int],
        layout: Sequence[str],
        dropout: float,
        head: str,
        in_channels: int,
        image_size: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        widths, layout = list(widths), list(layout)
        _check_architecture(widths, layout, dropout, head)
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        conv_widths = iter(widths)
        for position, token in enumerate(layout):
            if token == POOL_TOKEN:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            else:
                kernel, padding = CONV_TOKENS[token]
                width = next(conv_widths)
                layers += [
                    nn.Conv2d(channels, width, kernel, padding=padding),
                    nn.BatchNorm2d(width),
                    nn.ReLU(),
                    Dropout(dropout) if dropout > 0 else nn.Identity(),  # compiled, rate 0 would still draw masks
                ]
                channels, size = width, size + 2 * padding - kernel + 1
            if size < 1:
                raise UserError(
                    f"model.layout {layout} shrinks a {image_size}x{image_size} image to nothing at "
                    f"position {position} ({token!r}); use fewer 'pool'/'conv_valid' layers"
                )
        self.features = nn.Sequential(*layers)
        if head == "gap":
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
        else:
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class Dropout(nn.Module):
    """Dropout (zero each value with probability p, scale the rest by 1/(1-p)), quick on CPUs.

    On CPUs torch's own dropout draws its mask with aten::bernoulli_, which took a third of this
    network's training step on our 2-core machine. Here each value gets 16 random bits instead
    (four per 64-bit draw) and is dropped when they fall below p * 65536: the same Bernoulli mask
    with p rounded to a multiple of 1/65536 (0.1 -> 0.100006), at under half the cost.
    Elsewhere (CUDA, MPS) torch's fused dropout is used.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        # The rate again as a tensor, for compiled graphs: an input to them rather than a constant
        # in them, so that networks differing only in dropout (a sweep's trials) share their
        # compiled code in the on-disk cache. Not part of the state dict.
        self.register_buffer("rate", torch.tensor(float(p)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        if torch.compiler.is_compiling():
            return _MaskDropout.apply(x, self.rate)
        if self.p == 0.0:
            return x
        return _MaskDropout.apply(x, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def graph_settings(self) -> str:
        """What compiled graphs of this module depend on (cnnsweep.train.compiling.graph_key): not the
        rate, which they take as an input."""
        return ""


class _MaskDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float | torch.Tensor) -> torch.Tensor:
        # of 65536 equally likely 16-bit values, this many drop
        drop_below = torch.round(p * 65536) if isinstance(p, torch.Tensor) else round(p * 65536)
        n = x.numel()
        words = torch.randint(-(2**63), 2**63 - 1, (-(-n // 4),), dtype=torch.int64, device=x.device)
        bits = words.view(torch.int16)[:n].view(x.shape)  # uniform over [-32768, 32767]
        mask = torch.where(bits >= drop_below - 32768, 1.0 / (1.0 - drop_below / 65536), 0.0)
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (mask,) = ctx.saved_tensors
        return grad * mask, None


def _check_architecture(widths: list[int], layout: list[str], dropout: float, head: str) -> None:
    unknown = [token for token in layout if token not in CONV_TOKENS and token != POOL_TOKEN]
    if unknown:
        allowed = ", ".join([*CONV_TOKENS, POOL_TOKEN])
        raise UserError(f"model.layout has unknown layer(s) {unknown}; allowed: {allowed}")
    n_convs = sum(token in CONV_TOKENS for token in layout)
    if len(widths) != n_convs:
        raise UserError(
            f"model.widths has {len(widths)} entries but model.layout has {n_convs} convolutions; "
            "give one width per convolution"
        )
    bad = [w for w in widths if not isinstance(w, int) or isinstance(w, bool) or w <= 0]
    if bad:
        raise UserError(f"model.widths must be positive integers, got {widths}")
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"model.dropout={dropout} is outside [0, 1)")
    if head not in HEADS:
        raise UserError(f"model.head={head!r} is unknown; allowed: {', '.join(HEADS)}")


def build_model(config: Any) -> nn.Module:
    """The model a model config names (`_target_` and its arguments), built by Hydra's instantiate.

    Besides the run's own RUN_TARGETS, the exact `_target_` names inside the model config may be
    built: a model class of the user's own (README, Bring your own model) is named there by the
    model option they chose. Hydra still refuses the targets it never allows (os.system, ...).
    """
    trusted = (*RUN_TARGETS, *sorted(set(targets_in(config))))
    return make(config, _convert_="all", _execution_whitelist_=trusted)


def targets_in(node: Any) -> list[str]:
    """Every `_target_` value in a config node and the nodes inside it."""
    if isinstance(node, Mapping) or OmegaConf.is_dict(node):
        found = [str(node["_target_"])] if "_target_" in node else []
        return found + [target for key in node if key != "_target_" for target in targets_in(node[key])]
    if isinstance(node, (list, tuple)) or OmegaConf.is_list(node):
        return [target for item in node for target in targets_in(item)]
    return []


def check_outputs(model: nn.Module, target: str, in_channels: int, image_size: int, num_classes: int) -> None:
    """Refuse, in one line, a model that does not map a batch of the data's images to logits of shape
    N x num_classes. Runs it once in eval mode on two random images (no weights or statistics change,
    no draw from the run's random streams); warns when its outputs look like probabilities, which
    cross-entropy would treat as logits. Log-probabilities are fine: log-softmax leaves them as they are."""
    images = torch.randn(2, in_channels, image_size, image_size, generator=torch.Generator().manual_seed(0))
    shape = f"2 images of {in_channels}x{image_size}x{image_size}"
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            outputs = model(images)
    except Exception as error:  # noqa: BLE001 -- whatever the user's forward raises, said in one line
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"model {target} fails on a batch of {shape} (data.in_channels, data.image_size): {message}"
        ) from error
    finally:
        model.train(was_training)
    wanted = (2, num_classes)
    if not isinstance(outputs, torch.Tensor):
        raise UserError(
            f"model {target} returns a {type(outputs).__name__} for a batch of {shape}; "
            f"it should return one tensor of logits of shape {wanted}"
        )
    if tuple(outputs.shape) != wanted:
        raise UserError(
            f"model {target} returns shape {tuple(outputs.shape)} for a batch of {shape}; it should return "
            f"logits of shape {wanted}, one per class (data.num_classes={num_classes})"
        )
    outputs = outputs.float()
    if bool((outputs >= 0).all()) and torch.allclose(outputs.sum(1), torch.ones(2), atol=1e-4):
        log.warning(
            f"model {target} seems to return probabilities (rows of non-negative values summing to 1); "
            "cross-entropy treats its outputs as logits: return the values before the softmax"
        )


def model_size(config: Any) -> int:
    """The trainable parameters of the model a model config builds."""
    return count_parameters(build_model(config))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


SMALLER = "shrink the model (model.widths, for the shipped ones) or raise/disable budget.max_params"


class OverBudget(UserError):
    """The model has more trainable parameters than `budget.max_params` allows.

    fitting: (model option, parameters) pairs that would fit, named in the message.
    """

    run_status = RunStatus.OVER_BUDGET  # how a run stopped by this error ends

    def __init__(self, n_params: int, max_params: int, fitting: Sequence[tuple[str, int]] = ()) -> None:
        super().__init__(n_params, max_params, fitting)  # all in args, so the error pickles across processes
        self.n_params, self.max_params, self.fitting = n_params, max_params, list(fitting)

    def __str__(self) -> str:
        said = f"model has {self.n_params:,} parameters, over the budget of {self.max_params:,} "
        if self.fitting:
            fits = ", ".join(f"model={name} ({n:,})" for name, n in self.fitting)
            verb = "fits" if len(self.fitting) == 1 else "fit"
            return said + f"(for this data, {fits} {verb}; or {SMALLER})"
        return said + f"({SMALLER})"


def check_budget(n_params: int, max_params: int | None) -> None:
    """Refuse a model over the parameter budget (`budget.max_params`; None disables the check)."""
    if max_params is not None and n_params > max_params:
        raise OverBudget(n_params, max_params)
