"""Model tools: train and export the detectors, quantise them, build the CUDA kernel ahead of time."""
