"""``python -m bnnrobust fit|validate|test --config X.yaml`` (LightningCLI)."""

from bnnrobust.cli import main

if __name__ == "__main__":
    main()
