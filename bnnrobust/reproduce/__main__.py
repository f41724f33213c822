"""``python -m bnnrobust.reproduce``: see :mod:`bnnrobust.reproduce.cli`."""

from bnnrobust.noise import silence_library_noise
from bnnrobust.reproduce.cli import main

if __name__ == "__main__":
    silence_library_noise()
    raise SystemExit(main())
