"""python -m edgegemma.converter SRC -o OUT --type T [--force]: the same command as `edgegemma convert`."""
import sys

from edgegemma.cli import main

sys.exit(main(["convert", *sys.argv[1:]]))
