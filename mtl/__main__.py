"""``python -m mtl`` (what torchrun launches) runs the command-line interface."""

from mtl.cli import main

if __name__ == "__main__":
    main()
