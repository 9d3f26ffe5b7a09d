"""Request bodies and query parameters, with the bounds OpenAI's spec sets."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Metadata = dict[str, str]


def check_pairs(value: dict[str, Any] | None, what: str) -> None:
    """OpenAI's bounds on metadata and attributes: 16 pairs, keys ≤ 64, string values ≤ 512."""
    if value is None:
        return
    if len(value) > 16:
        raise ValueError(f"{what} can have at most 16 key-value pairs")
    for key, item in value.items():
        if len(key) > 64:
            raise ValueError(f"{what} key '{key[:20]}…' is longer than 64 characters")
        if isinstance(item, str) and len(item) > 512:
            raise ValueError(f"{what} value for '{key}' is longer than 512 characters")


def check_metadata(value: Metadata | None) -> Metadata | None:
    check_pairs(value, "metadata")
    return value


class Model(BaseModel):
    # Unknown fields are ignored, not refused: newer SDKs send fields older servers lack.
    model_config = ConfigDict(extra="ignore")


class WithMetadata(Model):
    metadata: Metadata | None = None

    _metadata = field_validator("metadata")(check_metadata)


class FunctionDefinition(Model):
    name: str = Field(max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(Model):
    type: Literal["function"]
    function: FunctionDefinition


class BuiltinTool(Model):
    model_config = ConfigDict(extra="allow")
    type: Literal["code_interpreter", "file_search"]


Tool = Annotated[FunctionTool | BuiltinTool, Field(discriminator="type")]


class JsonSchema(Model):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: str = Field(max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextFormat(Model):
    type: Literal["text"]


class JsonObjectFormat(Model):
    type: Literal["json_object"]


class JsonSchemaFormat(Model):
    type: Literal["json_schema"]
    json_schema: JsonSchema


ResponseFormat = (
    Literal["auto"]
    | Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]
)


class NamedFunction(Model):
    name: str


class FunctionChoice(Model):
    type: Literal["function"]
    function: NamedFunction


class BuiltinChoice(Model):
    type: Literal["file_search", "code_interpreter"]


ToolChoice = (
    Literal["none", "auto", "required"]
    | Annotated[FunctionChoice | BuiltinChoice, Field(discriminator="type")]
)


class TruncationStrategy(Model):
    type: Literal["auto", "last_messages"]
    last_messages: int | None = Field(default=None, ge=1)


Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(ge=0, le=1)]
TokenBudget = Annotated[int, Field(ge=256)]
Tools = Annotated[list[Tool], Field(max_length=128)]


MAX_CONTENT_CHARS = 256_000  # OpenAI's limit on a message's text


class CodeInterpreterResources(Model):
    file_ids: Annotated[list[str], Field(max_length=20)] | None = None


class VectorStoreHelper(Model):
    model_config = ConfigDict(extra="allow")
    file_ids: list[str] | None = None
    chunking_strategy: dict[str, Any] | None = None
    metadata: Metadata | None = None

    _metadata = field_validator("metadata")(check_metadata)


class FileSearchResources(Model):
    vector_store_ids: list[str] | None = None
    vector_stores: list[VectorStoreHelper] | None = None


class ToolResources(Model):
    """`tool_resources`, by shape only: which ids exist is checked where they are used."""

    code_interpreter: CodeInterpreterResources | None = None
    file_search: FileSearchResources | None = None


class AssistantFields(WithMetadata):
    name: str | None = Field(default=None, max_length=256)
    description: str | None = Field(default=None, max_length=512)
    instructions: str | None = Field(default=None, max_length=256_000)
    tools: Tools | None = None
    tool_resources: ToolResources | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    response_format: ResponseFormat | None = None


class AssistantCreate(AssistantFields):
    model: str = Field(min_length=1)


class AssistantModify(AssistantFields):
    model: str | None = Field(default=None, min_length=1)


class TextPart(Model):
    type: Literal["text"]
    text: str


class ImageURL(Model):
    url: str
    detail: Literal["auto", "low", "high"] = "auto"


class ImageURLPart(Model):
    type: Literal["image_url"]
    image_url: ImageURL


class ImageFile(Model):
    file_id: str
    detail: Literal["auto", "low", "high"] = "auto"


class ImageFilePart(Model):
    type: Literal["image_file"]
    image_file: ImageFile


ContentPart = Annotated[TextPart | ImageURLPart | ImageFilePart, Field(discriminator="type")]


class Attachment(Model):
    model_config = ConfigDict(extra="allow")
    file_id: str
    tools: list[dict[str, Any]] = []


class MessageCreate(WithMetadata):
    role: Literal["user", "assistant"]
    content: str | Annotated[list[ContentPart], Field(min_length=1)]
    attachments: list[Attachment] | None = None

    @field_validator("content")
    @classmethod
    def _text_within_limit(cls, value: str | list[Any]) -> str | list[Any]:
        if isinstance(value, str):
            chars = len(value)
        else:
            chars = sum(len(part.text) for part in value if isinstance(part, TextPart))
        if chars > MAX_CONTENT_CHARS:
            raise ValueError(f"the text has {chars} characters, more than the {MAX_CONTENT_CHARS} allowed")
        return value


class ThreadCreate(WithMetadata):
    messages: list[MessageCreate] | None = None
    tool_resources: ToolResources | None = None


class ThreadModify(WithMetadata):
    tool_resources: ToolResources | None = None


class MetadataModify(WithMetadata):
    pass


class RunSettings(WithMetadata):
    assistant_id: str
    model: str | None = None
    instructions: str | None = Field(default=None, max_length=256_000)
    tools: Tools | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stream: bool | None = None
    max_prompt_tokens: TokenBudget | None = None
    max_completion_tokens: TokenBudget | None = None
    truncation_strategy: TruncationStrategy | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self) -> RunSettings:
        choice = self.tool_choice
        if isinstance(choice, FunctionChoice) and self.tools is not None:
            names = {t.function.name for t in self.tools if isinstance(t, FunctionTool)}
            if choice.function.name not in names:
                raise ValueError(f"tool_choice names function '{choice.function.name}', which is not among the tools")
        return self


class RunCreate(RunSettings):
    additional_instructions: str | None = Field(default=None, max_length=256_000)
    additional_messages: list[MessageCreate] | None = None


class ThreadAndRunCreate(RunSettings):
    thread: ThreadCreate | None = None
    tool_resources: ToolResources | None = None


class ToolOutput(Model):
    tool_call_id: str
    output: str = ""


class SubmitToolOutputs(Model):
    tool_outputs: list[ToolOutput]
    stream: bool | None = None


class ListQuery(Model):
    limit: int = Field(default=20, ge=1, le=100)
    order: Literal["asc", "desc"] = "desc"
    after: str | None = None
    before: str | None = None


class MessageListQuery(ListQuery):
    run_id: str | None = None


def dump(model: BaseModel) -> dict[str, Any]:
    """A validated body as plain JSON data, only with the fields the caller set."""
    return model.model_dump(mode="json", exclude_unset=True, by_alias=True)
