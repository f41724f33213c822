"""``python -m bnnrobust fit|validate|test|predict --config X.yaml`` (LightningCLI) and
``python -m bnnrobust evaluate|reproduce|diagnose ...`` (see :func:`bnnrobust.cli.main`)."""

from bnnrobust.cli import main
from bnnrobust.errors import run_entry_point

if __name__ == "__main__":
    run_entry_point(main)
