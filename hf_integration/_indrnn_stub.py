"""TEMPORARY stand-in for indrnn_triton.IndRNN until the modules branch lands. Do not merge."""

import math

import torch
from torch import nn

from indrnn_triton import fused_indrnn


class IndRNN(nn.Module):
    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, recurrent_max_abs=None, recurrent_min_abs=0.0,
                 norm=None, residual=False, device=None, dtype=None):
        super().__init__()
        if norm is not None or residual:
            raise NotImplementedError("stub: norm/residual")
        assert batch_first
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.D = 2 if bidirectional else 1
        self.dropout = dropout
        self.r_max, self.r_min = recurrent_max_abs, recurrent_min_abs
        f = dict(device=device, dtype=dtype)
        self.weight_ih = nn.ParameterList()
        self.weight_hh = nn.ParameterList()
        self.bias = nn.ParameterList()
        for layer in range(num_layers):
            i = input_size if layer == 0 else hidden_size * self.D
            for _ in range(self.D):
                w = torch.empty(hidden_size, i, **f).uniform_(-1 / math.sqrt(i), 1 / math.sqrt(i))
                self.weight_ih.append(nn.Parameter(w))
                self.weight_hh.append(nn.Parameter(torch.empty(hidden_size, **f).uniform_(0, 1)))
                self.bias.append(nn.Parameter(torch.zeros(hidden_size, **f)))

    def forward(self, x, hx=None, mask=None):
        h_n = []
        for layer in range(self.num_layers):
            if layer > 0 and self.training and self.dropout > 0:
                x = x * torch.bernoulli(
                    x.new_full((x.shape[0], 1, x.shape[2]), 1 - self.dropout)) / (1 - self.dropout)
            outs = []
            for d in range(self.D):
                k = layer * self.D + d
                out, h = fused_indrnn(
                    nn.functional.linear(x, self.weight_ih[k]), self.weight_hh[k], self.bias[k],
                    None if hx is None else hx[k], recurrent_max_abs=self.r_max,
                    recurrent_min_abs=self.r_min, mask=mask, reverse=d == 1, batch_first=True)
                outs.append(out)
                h_n.append(h)
            x = torch.cat(outs, -1)
        return x, torch.stack(h_n)
