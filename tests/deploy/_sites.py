"""The pancreas batches that become the three sites (imported by name: no package here)."""

SITES = ["celseq", "celseq2", "smartseq2"]
