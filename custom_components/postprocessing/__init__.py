"""Post-processing of predicted label maps (connected-component rules chosen by cross-validation)."""
