"""Container logs: where they live, the CRI format, the writer with rotation, the reader kubectl logs uses."""
