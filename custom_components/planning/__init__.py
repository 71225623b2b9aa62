"""nnU-Net-style experiment planning: dataset fingerprint, then the rule-based plan (spacing, normalisation,
topology, patch and batch size) that the bundle configs read."""
