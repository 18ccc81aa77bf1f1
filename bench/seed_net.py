"""MY_NET as the primer writes it by hand: the competitor the benchmarks measure against."""

from __future__ import annotations

import torch
from torch import nn


class MyNet(nn.Module):
    """MY_NET as the primer writes it by hand."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv3 = nn.Conv2d(64, 128, kernel_size=3, padding=1)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.dropout = nn.Dropout(0.5)
        self.fc1 = nn.Linear(128 * 12 * 12, 512)
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(torch.relu(self.conv2(torch.relu(self.conv1(x)))))
        x = self.pool2(torch.relu(self.conv3(x)))
        x = self.dropout(torch.flatten(x, 1))
        x = self.dropout(torch.relu(self.fc1(x)))
        return self.fc2(x)
