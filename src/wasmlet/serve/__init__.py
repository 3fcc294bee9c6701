"""Pods that serve: the node's HTTP listeners on pod addresses (:mod:`.listeners`), the CGI
translation of WAGI (:mod:`.cgi`) and the WAGI container that ties them to the runtime
(:mod:`.wagi`). How and why: docs/networking.md."""
