"""`python -m router [serve] FLAGS...` is `gpupool serve FLAGS...`."""

import sys

from router.cli import main

argv = sys.argv[1:]
sys.exit(main(argv if argv[:1] == ["serve"] or argv[:1] in (["-h"], ["--help"]) else ["serve", *argv]))
