"""Entry point for `python -m mnist_lab`."""
import signal
import sys

from mnist_lab.cli.main import main

code = main()
signal.signal(signal.SIGINT, signal.SIG_IGN)  # a late Ctrl-C while Python shuts down is no traceback
sys.exit(code)
