"""Training side: a tensor/pipeline-parallel GPT, its schedule and data; one user of megatron_opt."""
