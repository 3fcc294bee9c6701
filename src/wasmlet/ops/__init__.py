"""What the Ansible collection does around the node: CSR approval, bootstrap tokens, htpasswd files,
supervised processes."""
