"""The command line, `python -m mnist_lab` / `mnist-lab`."""
