"""The apiserver as the node sees it: the client, kubeconfigs, events, the work queue, quantities,
JSON shapes and Kubernetes' name rules."""
