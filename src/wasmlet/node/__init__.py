"""The Node: its object, status and Lease, TLS bootstrap, the kubelet API, image GC, eviction."""
