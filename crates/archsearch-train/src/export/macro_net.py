

class Net(nn.Module):
    """archsearch's macro network: a stem (conv 3x3, BN, ReLU), one searched
    op per position, fixed stride-2 reductions (conv 3x3, BN, ReLU; channels
    double) before the positions in `reductions`, global average pooling and
    a linear classifier. Each op runs `repeats` times (`posN`, `posN.rep1`, ...)."""

    def __init__(self, ops, channels, reductions, stem_stride, repeats, in_channels, classes):
        super().__init__()
        c = channels
        _put(self, "stem.conv", nn.Conv2d(in_channels, c, 3, stride=stem_stride, padding=1, bias=False))
        _put(self, "stem.bn", nn.BatchNorm2d(c))
        # The forward plan, in plain lists and tuples (which do not register
        # modules a second time): per position, its reduction and its ops.
        self._layers = []
        for i, op in enumerate(ops):
            reduce = None
            if i in reductions:
                n = reductions.index(i) + 1
                conv = _put(self, f"reduce{n}.conv", nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=False))
                reduce = (conv, _put(self, f"reduce{n}.bn", nn.BatchNorm2d(2 * c)))
                c *= 2
            paths = [f"pos{i}"] + [f"pos{i}.rep{r}" for r in range(1, repeats)]
            self._layers.append((reduce, [self._op(p, op, c) for p in paths]))
        _put(self, "head", nn.Linear(c, classes))

    def _op(self, path, op, c):
        if op in ("conv3x3", "conv5x5", "dil3x3"):
            k, d = (5, 1) if op == "conv5x5" else (3, 2 if op == "dil3x3" else 1)
            conv = _put(self, f"{path}.conv", nn.Conv2d(c, c, k, padding=d * (k // 2), dilation=d, bias=False))
            bn = _put(self, f"{path}.bn", nn.BatchNorm2d(c))
            return lambda x: F.relu(bn(conv(x)))
        if op in ("sep3x3", "sep5x5"):
            k = 3 if op == "sep3x3" else 5
            dw = _put(self, f"{path}.dw", nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=False))
            pw = _put(self, f"{path}.pw", nn.Conv2d(c, c, 1, bias=False))
            bn = _put(self, f"{path}.bn", nn.BatchNorm2d(c))
            return lambda x: F.relu(bn(pw(dw(x))))
        if op == "maxpool3x3":
            return lambda x: F.max_pool2d(x, 3, 1, 1)
        if op == "avgpool3x3":
            return lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        if op == "identity":
            return lambda x: x
        raise ValueError(f"unknown op {op}")

    def forward(self, x):
        x = F.relu(self.stem.bn(self.stem.conv(x)))
        for reduce, ops in self._layers:
            if reduce is not None:
                x = F.relu(reduce[1](reduce[0](x)))
            for op in ops:
                x = op(x)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
