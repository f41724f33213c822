"""``python -m bnnrobust fit|validate|test --config X.yaml`` (LightningCLI)."""

from bnnrobust.cli import main
from bnnrobust.errors import run_entry_point

if __name__ == "__main__":
    run_entry_point(main)
