"""The cell neck shared by all levels (docs/method.md, "The network").

A level's FPN map ``(N, C, g*c, g*c)`` is split into ``g x g`` non-overlapping ``c x c`` cells
(``c = 7`` in paper mode), raster order (row-major, matching the montage's cell order). Each cell
goes through ``convs``: 4 x [3x3 conv C->C (no bias) + BN + ReLU], with zero padding at the cell's
border (padding stays inside the cell, as for RoI features), then global average pooling and the
MLP ``Linear C->H, BN, ReLU, Linear H->D, BN (no affine)``. Output ``(N, g*g, D)``.

``convs`` is built exactly like ``roi_heads.box_head[0:4]`` of ``maskrcnn_resnet50_fpn_v2``
(``Conv2dNormActivation`` with BatchNorm), so neck conv ``k`` transfers to box-head conv ``k``.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation


def split_cells(x: Tensor, cell: int) -> Tensor:
    """``(N, C, g*cell, g*cell) -> (N*g*g, C, cell, cell)``, cells in raster order per image."""
    n, c, h, w = x.shape
    if h != w or h % cell:
        raise ValueError(f"feature map {h}x{w} does not split into {cell}x{cell} cells")
    g = h // cell
    return x.view(n, c, g, cell, g, cell).permute(0, 2, 4, 1, 3, 5).reshape(n * g * g, c, cell, cell)


def mlp(in_dim: int, hidden: int, out_dim: int, last_bn: bool, last_bn_affine: bool = False) -> nn.Sequential:
    """``Linear, BN, ReLU, Linear`` (+ ``BN`` without affine when ``last_bn``)."""
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                               nn.Linear(hidden, out_dim)]
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=last_bn_affine))
    return nn.Sequential(*layers)


class CellNeck(nn.Module):
    """Per-cell 4-conv tower + average pool + MLP: ``(N, C, g*c, g*c) -> (N, g*g, D)``."""

    def __init__(self, channels: int, num_convs: int, hidden: int, out_dim: int, cell_size: int):
        super().__init__()
        self.cell_size, self.out_dim = cell_size, out_dim
        self.convs = nn.Sequential(*[
            Conv2dNormActivation(channels, channels, kernel_size=3, norm_layer=nn.BatchNorm2d)
            for _ in range(num_convs)
        ])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.mlp = mlp(channels, hidden, out_dim, last_bn=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming init for convs and linears (as released), unit/zero BN."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        cells = split_cells(x, self.cell_size)
        pooled = self.pool(self.convs(cells)).flatten(1)
        return self.mlp(pooled).view(n, -1, self.out_dim)


class Predictor(nn.Module):
    """``Linear D->H, BN, ReLU, Linear H->D``, initialised normal(std=0.01) as released."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = mlp(dim, hidden, dim, last_bn=False)
        for m in self.net.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
