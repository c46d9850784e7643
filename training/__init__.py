"""DPO training: tokenisation and prefix-shared batching, losses, the reference
log-prob cache, the trainer, its checkpoints and the policy weights.

Modules: `batching` (pairs -> packed micro-batches), `logps` (per-response
log-probs), `losses` (one function per objective), `reference` (cached
reference log-probs), `trainer` (`train_dpo`), `checkpoints` (resume),
`weights` (LoRA, saving a policy, weight hashes).
"""
