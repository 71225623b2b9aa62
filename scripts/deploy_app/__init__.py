"""A MONAI Deploy application for the packaged bundles (runs in the environment of scripts/setup_deploy_env.sh)."""
