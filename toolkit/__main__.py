"""python -m toolkit: the keyshift command line."""

from toolkit.cli import main

main(prog_name="keyshift")
