#!/usr/bin/env python
"""Probe: grouped convolution (groups=K) vs K separate 1/8-width ConvNets, fwd+bwd+SGD time per network-step.

The conv stack of the quick preset's ConvNet (11 layers, 8..64 channels, strides 1,1,2,1,1,2,1,1,2,1,1,
batch norm, ReLU; no head), batch 128 of 28x28 images, K = 8 networks either as 8 modules stepped one
after another or as one module whose convolutions have K x the channels and ``groups=K`` (each group is
one network; batch norm is per channel, so per network). A probe for whether grouping ConvNets would pay
on this CPU; the training code does not group ConvNets (see benchmarks/README.md).
"""
import time, torch
from torch import nn
CH = [8, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64]; ST = [1, 1, 2, 1, 1, 2, 1, 1, 2, 1, 1]
def net(K):
    layers, cin = [], 1
    for c, s in zip(CH, ST):
        layers += [nn.Conv2d(cin * K, c * K, 3, s, 1, groups=K), nn.BatchNorm2d(c * K), nn.ReLU()]
        cin = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
def step(m, x, opt):
    out = m(x); loss = out.square().mean(); opt.zero_grad(); loss.backward(); opt.step()
K, B, reps = 8, 128, 6
singles = [net(1) for _ in range(K)]; opts = [torch.optim.SGD(m.parameters(), lr=0.01) for m in singles]
g = net(K); og = torch.optim.SGD(g.parameters(), lr=0.01)
xs = torch.randn(B, 1, 28, 28); xg = torch.randn(B, K, 28, 28)
for m, o in zip(singles, opts): step(m, xs, o)
step(g, xg, og)
ts, tg = [], []
for r in range(reps):
    t = time.perf_counter()
    for m, o in zip(singles, opts): step(m, xs, o)
    ts.append((time.perf_counter() - t) / K)
    t = time.perf_counter(); step(g, xg, og); tg.append((time.perf_counter() - t) / K)
print(f"threads {torch.get_num_threads()}: one by one {min(ts)*1e3:.1f} ms/network-step, grouped conv (groups={K}) "
      f"{min(tg)*1e3:.1f} ms/network-step, ratio {min(ts)/min(tg):.2f}x")
