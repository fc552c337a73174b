"""Entry point of ``python -m piston``; the commands live in piston._cli."""
import sys

from piston._cli import main

if __name__ == "__main__":
    sys.exit(main())
