"""mnist_lab: the training core behind MNIST CNN Lab — data, models, training, experiments,
result store and CLI. Never imports streamlit."""

__version__ = "0.1.0"
