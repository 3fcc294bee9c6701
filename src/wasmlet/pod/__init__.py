"""A pod's trip on the node: the controller, admission, image, environment, volumes, status."""
