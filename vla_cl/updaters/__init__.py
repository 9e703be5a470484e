"""Fine-tuning methods (RL, SFT and KL-aware hybrids) as loss functions on one training loop.

``losses`` and ``advantages``: the pure math (policy-gradient, PPO, value, entropy, cross-entropy and KL
terms; GAE with truncation bootstrapping). ``base``: the ``Updater`` interface and shared configs.
``rl`` (ppo, reinforce, grpo) and ``supervised`` (sft, sft_kl, rft, oracle_sft, distill): the methods.
``registry``: updaters by name (``make_updater``, ``list_updaters``). ``data``: rollouts and
demonstration batches. ``loop``: the one training loop (``train``), with ``optim`` (AdamW, schedules) and
``checkpoint`` (exact resume). ``command``: ``vla-cl train``.
"""
