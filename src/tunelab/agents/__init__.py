"""Agents: the model as a reasoning engine that takes actions — tools (calculator, a
sandboxed Python, BM25 search, finish) and the loops that call them."""

from tunelab.agents.tools import BUILTIN, Observation, Tool, call_tool, make_tools

__all__ = ["BUILTIN", "Observation", "Tool", "call_tool", "make_tools"]
