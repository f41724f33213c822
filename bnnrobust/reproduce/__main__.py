"""``python -m bnnrobust.reproduce``: see :mod:`bnnrobust.reproduce.cli`."""

from bnnrobust.reproduce.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
