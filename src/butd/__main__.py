"""``python -m butd`` (and ``torchrun ... -m butd train ...``): the ``butd`` command line."""

from butd.cli import main

if __name__ == "__main__":
    main(prog_name="butd")
