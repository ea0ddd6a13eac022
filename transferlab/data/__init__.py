"""Images in: folders, the scan, decoding, preprocessing, caches and the LightningDataModule."""
