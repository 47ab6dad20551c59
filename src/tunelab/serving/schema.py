"""The OpenAI request bodies the server accepts, and its error shape.

Every string a client sends must be valid Unicode: JSON can carry a lone surrogate
(``"\\ud800"``), which Python keeps in a str and which breaks tokenizers and UTF-8
encoders later, inside a batch. It is refused here, naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def valid_unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode (it holds a lone surrogate such as \\ud800)") from None
    return text


Text = Annotated[str, AfterValidator(valid_unicode)]


def describe(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """One line for a validation failure, and the field it names. A union field (``stop``:
    a string or a list of them) fails once per member: a member that matched the type but
    failed a check says most; pydantic's member tags are left out of the field's path."""
    first = next((e for e in errors if "Unicode" in str(e.get("msg", ""))), errors[0])
    loc = first["loc"][1:] if first["loc"][:1] == ("body",) else first["loc"]  # FastAPI's errors start at 'body'
    parts = [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or "(" in p))]
    where = ".".join(parts) or "body"
    if first["type"] == "json_invalid":  # a lone surrogate escape ("\ud800") is one: it stands for no character
        where = (first.get("ctx") or {}).get("error")
        return "the body is not valid JSON" + (f" ({where})" if where else ""), None
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"[:500], (where if where != "body" else None)


class ApiError(Exception):
    """An answer in OpenAI's error shape with an HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.param, self.code = status, type_, param, code


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# Fields OpenAI defines that tunelab does not implement: accepted at their neutral value,
# refused with a clear message otherwise.
UNSUPPORTED = {"logprobs": (None, False), "top_logprobs": (None,), "echo": (None, False), "best_of": (None, 1),
               "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0), "logit_bias": (None, {}),
               "suffix": (None,), "functions": (None,), "function_call": (None,),
               # chat completions take these (ChatBody); completions do not
               "tools": (None, []), "tool_choice": (None, "none"), "response_format": (None,),
               "parallel_tool_calls": (None,)}
CHAT_ONLY = ("tools", "tool_choice", "response_format", "parallel_tool_calls")


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Text = Field(max_length=200)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=16)
    stop: Text | list[Text] | None = None
    stream: bool = False
    stream_options: dict[str, bool] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    user: Text | None = Field(default=None, max_length=256)
    # OpenAI's, not implemented (see UNSUPPORTED)
    logprobs: Any = None
    top_logprobs: Any = None
    echo: Any = None
    best_of: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    logit_bias: Any = None
    suffix: Any = None
    tools: Any = None
    tool_choice: Any = None
    response_format: Any = None
    functions: Any = None
    function_call: Any = None
    parallel_tool_calls: Any = None

    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class CompletionBody(Options):
    prompt: Text | list[Text]

    def texts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: Text


Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    description: Text | None = Field(default=None, max_length=4096)
    parameters: dict[str, Any] | None = None  # a JSON schema; checked when it is compiled
    strict: bool | None = None


class ToolDef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name


class NamedChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: Name
    description: Text | None = Field(default=None, max_length=4096)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    arguments: Text


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Text = Field(max_length=128)
    type: Literal["function"]
    function: FunctionCall


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | Annotated[list[ContentPart], Field(max_length=256)] | None = None
    name: Text | None = Field(default=None, max_length=64)
    tool_calls: list[ToolCall] | None = Field(default=None, max_length=64)
    tool_call_id: Text | None = Field(default=None, max_length=128)

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatBody(Options):
    messages: list[Message] = Field(min_length=1, max_length=100_000)  # the server's --max-messages is checked after
    tools: list[ToolDef] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedChoice | None = None
    response_format: ResponseFormat | None = None
    parallel_tool_calls: bool | None = None  # one call per reply either way

    def template_messages(self) -> list[dict[str, str]]:
        """The messages as chat templates take them (OpenAI's 'developer' is a system turn)."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class LoadBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text = Field(max_length=64, description="The name requests will use in their 'model' field.")
    path: Text = Field(max_length=4096, description="The adapter folder, relative to (or inside) the allowed directory.")
