"""The pods' network on one node: their IPs (:mod:`.addresses`), the node-local interface that
makes the node's podCIDR local and keeps the cluster's ranges on the machine (:mod:`.interface`),
and what the pod controller asks of both (:mod:`.pod_network`). How and why: docs/networking.md."""
