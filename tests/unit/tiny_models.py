"""Small models shared by unit tests: real nn.Modules that describe themselves like Megatron's.

A plain module (not conftest) so unit and functional tests can be collected in one run."""

from __future__ import annotations

import copy

import torch


class TinyLM(torch.nn.Module):
    """Embedding → two blocks (LayerNorm, Linear+bias) → output layer; ~2k parameters."""

    def __init__(self, vocab: int = 32, hidden: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embedding = torch.nn.Embedding(vocab, hidden)
        self.blocks = torch.nn.ModuleList()
        for _ in range(2):
            block = torch.nn.Module()
            block.norm = torch.nn.LayerNorm(hidden)
            block.fc1 = torch.nn.Linear(hidden, 2 * hidden)
            block.fc2 = torch.nn.Linear(2 * hidden, hidden)
            self.blocks.append(block)
        self.output = torch.nn.Linear(hidden, vocab, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        self.embedding.weight.is_embedding_or_output = True
        self.output.weight.is_embedding_or_output = True

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embedding(tokens)
        for block in self.blocks:
            h = block.norm(x)
            x = x + block.fc2(torch.nn.functional.gelu(block.fc1(h)))
        return self.output(x)


def lm_loss(model: torch.nn.Module, step: int, vocab: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + step)
    tokens = torch.randint(0, vocab, (4, 8), generator=g)
    logits = model(tokens[:, :-1])
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab), tokens[:, 1:].reshape(-1))

