"""The training loop, the stepper interface and the engines (plain, CUDA graph, C++ kernels, stacked
seeds) behind one registry."""
