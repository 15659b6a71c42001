"""``python -m butd`` is the ``butd`` command."""

from butd.cli import main

if __name__ == "__main__":
    main()
