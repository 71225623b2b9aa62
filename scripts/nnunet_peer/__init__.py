"""nnU-Net v2, the peer the benchmark measures us against: its environment's extra files (scripts/setup_nnunet_env.sh)."""
