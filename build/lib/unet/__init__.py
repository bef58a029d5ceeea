"""Shared U-Net code: model, config, training engine, losses, metrics, data readers."""
