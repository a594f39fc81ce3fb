"""The Python half of the `mix` Lua module, one file per family of calls.

Each module has ``bridge(vm) -> dict`` of functions the prelude wires into
`mix`. They take and return Lua-ready values (bytes for strings) and report
bad arguments as ``nil, err`` values, never by raising.
"""
