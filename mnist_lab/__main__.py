"""Entry point for `python -m mnist_lab`."""
import sys

from .cli import main

sys.exit(main())
