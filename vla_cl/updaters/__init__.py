"""Fine-tuning methods (RL, SFT and KL-aware hybrids) as loss functions on one training loop."""
