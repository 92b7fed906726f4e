"""The library on its own: Muon for the matrices, Adam for the rest, a cosine schedule.

    python examples/library_quickstart.py
"""

import torch

from megatron_opt import OptimizerConfig, OptimizerParamScheduler, get_megatron_optimizer

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))

# 2-D weights go to Muon; biases (1-D) are routed to muon_scalar_optimizer (adam) automatically.
# Per-group max_lr/min_lr come from the config (as in Megatron-LM), so set min_lr there too.
# On a CPU, run Newton–Schulz in fp32 ("highest"); "medium" (bf16) is the GPU default.
config = OptimizerConfig(optimizer="muon", lr=0.02, min_lr=0.002, weight_decay=0.01, muon_fp32_matmul_prec="highest")
optimizer = get_megatron_optimizer(config, [model])
scheduler = OptimizerParamScheduler(
    optimizer,
    init_lr=0.0,
    max_lr=0.02,
    min_lr=0.002,
    lr_warmup_steps=10,
    lr_decay_steps=200,
    lr_decay_style="cosine",
    start_wd=0.01,
    end_wd=0.01,
    wd_incr_steps=200,
    wd_incr_style="constant",
)

for step in range(200):
    x = torch.randn(16, 32)
    loss = (model(x) - x).pow(2).mean()  # learn the identity map
    optimizer.zero_grad()
    loss.backward()
    updated, grad_norm, _ = optimizer.step()
    scheduler.step(1)
    if step % 50 == 0 or step == 199:
        print(f"step {step:3d}  loss {loss.item():.4f}  grad norm {grad_norm:.3f}  lr {scheduler.get_canonical_lr_for_logging():.2e}")
print(type(optimizer).__name__, [type(c.optimizer).__name__ for c in optimizer.chained_optimizers])
