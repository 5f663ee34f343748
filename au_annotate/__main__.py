"""`python -m au_annotate` runs the command-line interface."""

from au_annotate.cli import main

if __name__ == "__main__":
    main()
