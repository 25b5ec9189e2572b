"""Drives a running Switchyard whose model replays recorded Qwen3-style outputs (reasoning,
Hermes tool calls, a malformed call) with the official `openai` client: `reasoning_content`,
`tool_calls` (streamed and not), `/v1/responses` (whole and streamed), `/v1/models/{id}`, the
timing extension and the embeddings refusal. Usage: openai_parsers_client.py BASE_URL MODEL.
The server's replayed output for a request is chosen by its seed (see openai_parsers.rs)."""

import json
import sys

import openai

base_url, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", timeout=30, max_retries=0)

GREETING, WEATHER, MALFORMED = 0, 1, 2
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
USER = [{"role": "user", "content": "Hello!"}]


def extra(obj, key):
    return (obj.model_extra or {}).get(key)


assert client.models.retrieve(model).id == model

# Reasoning, whole.
chat = client.chat.completions.create(model=model, messages=USER, max_tokens=400, seed=GREETING)
message = chat.choices[0].message
assert extra(message, "reasoning_content") == "The user says hello. I will greet back.", message
assert message.content == "Hello! How can I help you today?", message
assert chat.choices[0].finish_reason == "stop", chat.choices[0]

# Reasoning, streamed.
reasoning, content = "", ""
for chunk in client.chat.completions.create(
    model=model, messages=USER, max_tokens=400, seed=GREETING, stream=True
):
    for choice in chunk.choices:
        reasoning += extra(choice.delta, "reasoning_content") or ""
        content += choice.delta.content or ""
assert reasoning == "The user says hello. I will greet back.", reasoning
assert content == "Hello! How can I help you today?", content

# Tool calls, whole.
chat = client.chat.completions.create(
    model=model, messages=USER, tools=TOOLS, max_tokens=400, seed=WEATHER
)
choice = chat.choices[0]
assert choice.finish_reason == "tool_calls", choice
assert extra(choice.message, "reasoning_content") == "I need the weather tool.", choice.message
calls = choice.message.tool_calls
assert len(calls) == 1 and calls[0].type == "function", calls
assert calls[0].id.startswith("call_"), calls[0]
assert calls[0].function.name == "get_weather", calls[0]
assert json.loads(calls[0].function.arguments) == {"city": "Paris", "unit": "celsius"}, calls[0]

# Tool calls, streamed: accumulated by index as OpenAI's clients do.
streamed, finish = {}, None
for chunk in client.chat.completions.create(
    model=model, messages=USER, tools=TOOLS, max_tokens=400, seed=WEATHER, stream=True
):
    for choice in chunk.choices:
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or []:
            call = streamed.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = delta.id or call["id"]
            if delta.function is not None:
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
assert finish == "tool_calls", finish
assert list(streamed) == [0] and streamed[0]["name"] == "get_weather", streamed
assert json.loads(streamed[0]["arguments"]) == {"city": "Paris", "unit": "celsius"}, streamed

# Malformed tool JSON comes back as text, not as an error.
chat = client.chat.completions.create(
    model=model, messages=USER, tools=TOOLS, max_tokens=400, seed=MALFORMED
)
assert not chat.choices[0].message.tool_calls, chat.choices[0].message
assert "<tool_call>" in chat.choices[0].message.content, chat.choices[0].message
assert chat.choices[0].finish_reason == "stop", chat.choices[0]

# tool_choice "none": no parsing.
chat = client.chat.completions.create(
    model=model, messages=USER, tools=TOOLS, tool_choice="none", max_tokens=400, seed=WEATHER
)
assert not chat.choices[0].message.tool_calls and "<tool_call>" in chat.choices[0].message.content

# The timing extension.
chat = client.chat.completions.create(
    model=model, messages=USER, max_tokens=400, seed=GREETING, extra_body={"nvext": {"timing": True}}
)
nvext = extra(chat, "nvext")
assert nvext and nvext["worker_id"] and nvext["timing"]["total_ms"] > 0, nvext

# Responses API, whole.
response = client.responses.create(
    model=model, input="Hello!", max_output_tokens=400, extra_body={"seed": GREETING}
)
assert response.status == "completed", response
assert response.output_text == "Hello! How can I help you today?", response.output_text
kinds = [item.type for item in response.output]
assert kinds == ["reasoning", "message"], kinds
assert response.usage.output_tokens > 0, response.usage

response = client.responses.create(
    model=model,
    input=[{"role": "user", "content": "Weather in Paris?"}],
    tools=[{"type": "function", "name": "get_weather", "parameters": TOOLS[0]["function"]["parameters"]}],
    max_output_tokens=400,
    extra_body={"seed": WEATHER},
)
calls = [item for item in response.output if item.type == "function_call"]
assert len(calls) == 1 and calls[0].name == "get_weather", response.output
assert json.loads(calls[0].arguments) == {"city": "Paris", "unit": "celsius"}, calls[0]

# Responses API, streamed.
events = list(
    client.responses.create(
        model=model, input="Hello!", max_output_tokens=400, stream=True, extra_body={"seed": GREETING}
    )
)
types = [e.type for e in events]
assert types[0] == "response.created" and types[-1] == "response.completed", types
text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
assert text == "Hello! How can I help you today?", text
assert events[-1].response.output_text == text, events[-1].response

events = list(
    client.responses.create(
        model=model,
        input="Weather in Paris?",
        tools=[{"type": "function", "name": "get_weather", "parameters": TOOLS[0]["function"]["parameters"]}],
        max_output_tokens=400,
        stream=True,
        extra_body={"seed": WEATHER},
    )
)
types = [e.type for e in events]
assert "response.reasoning_text.delta" in types, types
done = [e for e in events if e.type == "response.function_call_arguments.done"]
assert len(done) == 1 and json.loads(done[0].arguments) == {"city": "Paris", "unit": "celsius"}, done
final = [item.type for item in events[-1].response.output]
assert final == ["reasoning", "function_call"], final
assert [e.sequence_number for e in events] == list(range(len(events))), types

# A model whose engines serve no embeddings: a clear 400 naming it.
try:
    client.embeddings.create(model=model, input="hi")
    raise AssertionError("embeddings accepted")
except openai.BadRequestError as e:
    assert model in str(e), e

print("openai client (parsers): all checks passed")
