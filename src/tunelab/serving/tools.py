"""OpenAI tool calling and structured output for ``tunelab serve``: the request's tools
rendered into the prompt, and the model's calls generated under their JSON schemas by
llguidance (``tunelab.agents.constrained``), so a call always parses, whatever the model.

How a reply is made, by ``tool_choice``:
- ``none`` (or no tools): free text (under ``response_format``'s schema if one is given);
- ``required`` or a named function: the reply is a call, generated under the schema of
  {"name": ..., "arguments": ...} for the allowed functions, after "<tool_call>";
- ``auto`` (the default with tools): free text that stops at "<tool_call>" if the model
  opens one; then the call, constrained as above.

Tools are described to models whose chat template does not take ``tools`` in a system
turn, Hermes-style (``<tool_call>{...}</tool_call>``, results in ``<tool_response>``).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from tunelab.serving.schema import ApiError, ChatBody

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"


def template_takes_tools(tokenizer: Any) -> bool:
    return "tools" in (getattr(tokenizer, "chat_template", None) or "")


def chat_messages(body: ChatBody, native_tools: bool) -> list[dict[str, Any]]:
    """The messages for the chat template: tool calls and tool results written out
    Hermes-style, and the tools described in the system turn, unless the template takes
    them itself (``native_tools``)."""
    messages: list[dict[str, Any]] = []
    for m in body.messages:
        role = "system" if m.role == "developer" else m.role
        text = m.text()
        if m.tool_calls:
            calls = "".join(f"{CALL_OPEN}{json.dumps({'name': c.function.name, 'arguments': _arguments(c.function.arguments)})}"
                            f"{CALL_CLOSE}" for c in m.tool_calls)
            text = (text + "\n" if text else "") + calls
        if role == "tool":
            role, text = ("tool", text) if native_tools else ("user", f"<tool_response>\n{text}\n</tool_response>")
        messages.append({"role": role, "content": text})
    if body.tools and body.tool_choice != "none" and not native_tools:
        described = tools_prompt(body)
        if messages and messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": messages[0]["content"] + "\n\n" + described}
        else:
            messages.insert(0, {"role": "system", "content": described})
    return messages


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def tools_prompt(body: ChatBody) -> str:
    specs = "\n".join(json.dumps(t.model_dump(exclude_none=True)) for t in body.tools or [])
    return ("You may call functions to help with the request. Their signatures:\n<tools>\n" + specs + "\n</tools>\n"
            f'To call one, reply with {CALL_OPEN}{{"name": <function name>, "arguments": <arguments object>}}{CALL_CLOSE}.')


def allowed_functions(body: ChatBody) -> list[str] | None:
    """The functions a reply may call; None when it may not call any."""
    if not body.tools or body.tool_choice == "none":
        return None
    names = [t.function.name for t in body.tools]
    choice = body.tool_choice
    if choice is not None and not isinstance(choice, str):
        if choice.function.name not in names:
            raise ApiError(400, f"tool_choice names '{choice.function.name}', which is not in tools", param="tool_choice")
        return [choice.function.name]
    return names


def must_call(body: ChatBody) -> bool:
    return body.tool_choice == "required" or (body.tool_choice is not None and not isinstance(body.tool_choice, str))


def call_schema(body: ChatBody, names: list[str]) -> dict[str, Any]:
    """A call of one of ``names``, each with its own parameters' schema."""
    options = []
    for tool in body.tools or []:
        if tool.function.name in names:
            parameters = tool.function.parameters or {"type": "object"}
            options.append({"type": "object", "properties": {"name": {"const": tool.function.name},
                                                             "arguments": parameters},
                            "required": ["name", "arguments"], "additionalProperties": False})
    return options[0] if len(options) == 1 else {"anyOf": options}


def response_schema(body: ChatBody) -> dict[str, Any] | None:
    """The JSON schema ``response_format`` asks the reply to follow, if any."""
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "object"}
    if fmt.json_schema is None:
        raise ApiError(400, "response_format json_schema needs a 'json_schema' object", param="response_format")
    return fmt.json_schema.schema_ or {"type": "object"}


def tool_call(text: str) -> dict[str, Any]:
    """OpenAI's tool_calls entry for a constrained call's text."""
    value = json.loads(text)
    return {"id": "call_" + secrets.token_hex(12), "type": "function",
            "function": {"name": value["name"], "arguments": json.dumps(value["arguments"])}}
