
# Edges (from node, to node) of a NAS-Bench-201 cell, in architecture order.
EDGES = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]


class ReLUConvBN(nn.Module):
    def __init__(self, cin, cout, k, stride):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.conv(F.relu(x)))


class Net(nn.Module):
    """The NAS-Bench-201 cell network (Dong & Yang, ICLR 2020): a stem (conv
    3x3, BN), three stages of `cells` cells with a residual reduction block
    between stages, then BN, ReLU, global average pooling and a linear
    classifier. Node j of a cell sums op(i -> j)(node i) over i < j; the six
    edge ops are the architecture. An edge's weights are named
    `pos{edge}.stage{s}.cell{c}`."""

    def __init__(self, edges, channels, cells, in_channels, classes):
        super().__init__()
        c = channels
        _put(self, "stem.conv", nn.Conv2d(in_channels, c, 3, padding=1, bias=False))
        _put(self, "stem.bn", nn.BatchNorm2d(c))
        # The forward plan, in plain lists and tuples (which do not register
        # modules a second time).
        self._blocks = []
        for stage in range(3):
            if stage > 0:
                a = _put(self, f"reduce{stage}.a", ReLUConvBN(c, 2 * c, 3, 2))
                b = _put(self, f"reduce{stage}.b", ReLUConvBN(2 * c, 2 * c, 3, 1))
                shortcut = _put(self, f"reduce{stage}.shortcut", nn.Conv2d(c, 2 * c, 1, bias=False))
                self._blocks.append(("reduce", (a, b, shortcut)))
                c *= 2
            for cell in range(cells):
                ops = [self._edge_op(f"pos{e}.stage{stage}.cell{cell}", op, c) for e, op in enumerate(edges)]
                self._blocks.append(("cell", ops))
        _put(self, "head.bn", nn.BatchNorm2d(c))
        _put(self, "head.linear", nn.Linear(c, classes))

    def _edge_op(self, path, op, c):
        if op == "none":
            return None
        if op == "skip_connect":
            return lambda x: x
        if op in ("nor_conv_1x1", "nor_conv_3x3"):
            return _put(self, path, ReLUConvBN(c, c, 1 if op == "nor_conv_1x1" else 3, 1))
        if op == "avg_pool_3x3":
            return lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        raise ValueError(f"unknown op {op}")

    def forward(self, x):
        x = self.stem.bn(self.stem.conv(x))
        for kind, block in self._blocks:
            if kind == "reduce":
                a, b, shortcut = block
                x = shortcut(F.avg_pool2d(x, 2, 2)) + b(a(x))
                continue
            nodes = [x]
            for j in range(1, 4):
                terms = [block[e](nodes[i]) for e, (i, to) in enumerate(EDGES) if to == j and block[e] is not None]
                nodes.append(sum(terms[1:], terms[0]) if terms else torch.zeros_like(x))
            x = nodes[-1]
        x = F.relu(self.head.bn(x))
        return self.head.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
