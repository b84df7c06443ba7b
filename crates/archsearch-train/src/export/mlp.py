
_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}


class Net(nn.Module):
    """archsearch's MLP: the flattened input through searched layers (linear,
    optional LayerNorm, activation, optional residual when the widths agree),
    then a linear classifier. A layer's weights are named by the decision
    that makes them exist: `pos{width decision}.layer{N}.linear`,
    `pos{norm decision}.layer{N}.norm`."""

    def __init__(self, layers, in_features, classes):
        super().__init__()
        self._layers = []  # the forward plan (a plain list registers nothing)
        cin = in_features
        for l in layers:
            w = l["width"]
            linear = _put(self, f"pos{l['width_pos']}.layer{l['number']}.linear", nn.Linear(cin, w))
            norm = None
            if l["norm_pos"] is not None:
                norm = _put(self, f"pos{l['norm_pos']}.layer{l['number']}.norm", nn.LayerNorm(w))
            self._layers.append((linear, norm, _ACTIVATIONS[l["act"]], l["residual"]))
            cin = w
        _put(self, "head", nn.Linear(cin, classes))

    def forward(self, x):
        x = torch.flatten(x, 1)
        for linear, norm, act, residual in self._layers:
            y = linear(x)
            if norm is not None:
                y = norm(y)
            y = act(y)
            x = y + x if residual else y
        return self.head(x)
