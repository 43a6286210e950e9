"""Datasets as specs (shapes, classes, counts, checksums, sources), their loading, verification and
cache, and the tensors training reads."""
