"""``python -m rlpost``: the same command line as ``rlpost``."""

from rlpost.cli import main

if __name__ == "__main__":
    main()
