"""A pod's volumes as WASI preopens: PodVolumes (:mod:`.pod_volumes`) and a module per type or concern."""
