"""python -m scripts.deploy_app -m PKG/models/model.ts -i INPUT -o OUTPUT_DIR (see app.py)."""

import sys

from scripts.deploy_app.app import DeployInputError, UNetFamilyApp

if __name__ == "__main__":
    try:
        UNetFamilyApp().run()
    except DeployInputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
