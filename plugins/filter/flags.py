# Copyright: wasmlet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``flags`` filter: a mapping of command-line options to ``--name=value`` arguments."""

from __future__ import annotations

DOCUMENTATION = r"""
name: flags
short_description: Turn a dict of options into C(--name=value) arguments
version_added: "0.1.0"
description:
  - Renders each key/value pair of a mapping as one C(--key=value) argument, in sorted key order,
    for appending extra flags to a component's command line. Boolean values render as C(true)/C(false).
    A key may be given with or without its leading dashes.
options:
  _input:
    description: Options and their values.
    type: dict
    required: true
author:
  - wasmlet contributors (@wasmlet)
"""

EXAMPLES = r"""
- name: Extra apiserver flags
  ansible.builtin.debug:
    msg: "{{ {'max-requests-inflight': 800, 'profiling': false} | wasmlet.kube.flags }}"
  # => ['--max-requests-inflight=800', '--profiling=false']
"""

RETURN = r"""
_value:
  description: The arguments.
  type: list
  elements: str
"""

from ansible.errors import AnsibleFilterError


def flags(options):
    if not isinstance(options, dict):
        raise AnsibleFilterError(f"flags expects a dict of options, got {type(options).__name__}")
    rendered = {}
    for key, value in options.items():
        name = str(key).lstrip("-")
        if not name:
            raise AnsibleFilterError(f"flags: option name {key!r} is empty")
        if name in rendered:
            raise AnsibleFilterError(f"flags: option --{name} is given twice")
        text = ("true" if value else "false") if isinstance(value, bool) else value
        rendered[name] = f"--{name}={text}"
    return [rendered[name] for name in sorted(rendered)]


class FilterModule:
    def filters(self):
        return {"flags": flags}
