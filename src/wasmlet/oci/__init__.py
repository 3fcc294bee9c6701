"""Images: references, credentials, manifests, the registry transport, pulls, pushes, the module store."""
