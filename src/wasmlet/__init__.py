"""wasmlet: a kubelet for WebAssembly workloads."""

__version__ = "0.1.0"
