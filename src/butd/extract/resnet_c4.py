"""ResNet-101 C4 backbone and res5 RoI head, laid out as the bottom-up-attention Caffe model.

Module names are chosen so that ``state_dict()`` keys equal the detectron2 checkpoint keys
(``backbone.stem.conv1.weight``, ``backbone.res2.0.conv1.norm.weight``, ``roi_heads.res5.0...``).

Caffe specifics (see models/vg/ResNet-101/faster_rcnn_end2end_final/test.prototxt in
peteanderson80/bottom-up-attention, and the "caffemaxpool" config of py-bottom-up-attention):

* stem: 7x7/2 conv (pad 3) then 3x3/2 max-pool with pad 0 and ceil rounding;
* the stride of a downsampling block sits in its first 1x1 conv ("stride in 1x1");
* res5 (run per RoI on the 14x14 pooled map) has stride 1 and dilation 2 in its 3x3 convs;
* batch norm is frozen: y = x * weight / sqrt(running_var + eps) + (bias - running_mean * scale).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-5
# blocks per stage for ResNet-101: res2, res3, res4 (backbone), res5 (RoI head)
R101_BLOCKS = {"res2": 3, "res3": 4, "res4": 23, "res5": 3}


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters, all stored as buffers."""

    def __init__(self, num_features: int, eps: float = BN_EPS):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return scale, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.affine()
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    def forward_(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` in place on ``x`` (a fresh conv output): the same multiply then add, bit for bit,
        without allocating two activation-sized tensors per layer (a third of the CPU time of res5)."""
        scale, shift = self.affine()
        return x.mul_(scale.view(1, -1, 1, 1).to(x.dtype)).add_(shift.view(1, -1, 1, 1).to(x.dtype))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class ConvNorm(nn.Conv2d):
    """A bias-free conv followed by a frozen BN held as child ``norm`` (detectron2 naming)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, dilation: int = 1):
        super().__init__(cin, cout, k, stride=stride, padding=padding, dilation=dilation, bias=False)
        self.norm = FrozenBatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm.forward_(super().forward(x))  # the conv output is ours: normalise it in place


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 residual block; stride in the first 1x1 conv (Caffe/MSRA style)."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.shortcut = ConvNorm(cin, cout, 1, stride=stride) if (cin != cout or stride != 1) else None
        self.conv1 = ConvNorm(cin, mid, 1, stride=stride)
        self.conv2 = ConvNorm(mid, mid, 3, padding=dilation, dilation=dilation)
        self.conv3 = ConvNorm(mid, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu_(self.conv1(x))
        y = F.relu_(self.conv2(y))
        y = self.conv3(y)
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(y.add_(identity))  # in place: y is this block's own tensor (same sum, no copy)


def make_stage(n: int, cin: int, mid: int, cout: int, first_stride: int, dilation: int = 1) -> nn.Sequential:
    blocks = [Bottleneck(cin, mid, cout, stride=first_stride, dilation=dilation)]
    blocks += [Bottleneck(cout, mid, cout, dilation=dilation) for _ in range(n - 1)]
    return nn.Sequential(*blocks)


def caffe_pool_size(n: int, kernel: int = 3, stride: int = 2, pad: int = 0) -> int:
    """Caffe's pooling output size: ceil((n + 2*pad - kernel) / stride) + 1 (clipped when padded)."""
    out = -(-(n + 2 * pad - kernel) // stride) + 1
    if pad > 0 and (out - 1) * stride >= n + pad:
        out -= 1
    return out


class Stem(nn.Module):
    def __init__(self, cout: int = 64):
        super().__init__()
        self.conv1 = ConvNorm(3, cout, 7, stride=2, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        # Caffe pooling: no padding, ceil rounding of the output size
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=0, ceil_mode=True)


class ResNetC4(nn.Module):
    """stem + res2..res4; output stride 16, 1024 channels."""

    stride = 16
    out_channels = 1024

    def __init__(self, blocks: dict[str, int] = R101_BLOCKS):
        super().__init__()
        self.stem = Stem(64)
        self.res2 = make_stage(blocks["res2"], 64, 64, 256, first_stride=1)
        self.res3 = make_stage(blocks["res3"], 256, 128, 512, first_stride=2)
        self.res4 = make_stage(blocks["res4"], 512, 256, 1024, first_stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res4(self.res3(self.res2(self.stem(x))))


def make_res5(blocks: int = R101_BLOCKS["res5"]) -> nn.Sequential:
    """res5 as in the VG Caffe model: first stride 1, dilation 2 (pad 2) in every 3x3 conv."""
    return make_stage(blocks, 1024, 512, 2048, first_stride=1, dilation=2)
