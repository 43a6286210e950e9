"""Entry point for `python -m mnist_lab`."""
import sys

from mnist_lab.cli.main import main

sys.exit(main())
