"""Tiny TOML writer for the e2e helper scripts.

The Rust side of the tests reads these results with the `toml` crate (a
dependency of the daemon) because no JSON parser is among the crate's
dependencies. Only what the scripts emit is supported: bool, int, float,
str, list, and dict (as an inline table). None values are left out.
"""

import json


def value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        # A JSON string is a valid TOML basic string, except that TOML
        # forbids a raw DEL.
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{value(str(k))} = {value(x)}" for k, x in v.items() if x is not None) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def table(d, header=None):
    """Top-level keys of d as `key = value` lines, under [[header]] if given."""
    lines = [f"[[{header}]]"] if header else []
    lines += [f"{value(str(k))} = {value(x)}" for k, x in d.items() if x is not None]
    return "\n".join(lines) + "\n"
