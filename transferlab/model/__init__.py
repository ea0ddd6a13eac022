"""The network: backbones, heads, transfer modes, the LightningModule and loading checkpoints."""
