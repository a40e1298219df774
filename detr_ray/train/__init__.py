"""Distributed training: the engine (plain PyTorch), the Ray Train worker, the driver."""
