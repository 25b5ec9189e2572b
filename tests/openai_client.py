"""Drives a running Switchyard with the official `openai` client: chat and completions,
streamed and not. Usage: openai_client.py BASE_URL MODEL. Exits non-zero on any mismatch."""

import sys

import openai

base_url, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", timeout=30, max_retries=0)

models = [m.id for m in client.models.list()]
assert model in models, models

chat = client.chat.completions.create(
    model=model,
    messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}],
    max_tokens=8,
    temperature=0.5,
    seed=7,
)
assert chat.object == "chat.completion", chat
assert chat.choices[0].message.role == "assistant"
assert isinstance(chat.choices[0].message.content, str)
assert chat.choices[0].finish_reason == "length", chat.choices[0].finish_reason
assert chat.usage.completion_tokens == 8, chat.usage
assert chat.usage.total_tokens == chat.usage.prompt_tokens + 8, chat.usage

stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Count to three."}],
    max_tokens=6,
    stream=True,
    stream_options={"include_usage": True},
)
text, finish, usage = "", None, None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        text += choice.delta.content or ""
        finish = choice.finish_reason or finish
assert finish == "length", finish
assert usage is not None and usage.completion_tokens == 6, usage

completion = client.completions.create(model=model, prompt="Once upon a time", max_tokens=5)
assert completion.object == "text_completion", completion
assert completion.usage.completion_tokens == 5, completion.usage

pieces = list(client.completions.create(model=model, prompt="Once", max_tokens=4, stream=True))
assert pieces and pieces[-1].choices[0].finish_reason == "length", pieces[-1]

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as e:
    assert e.status_code == 404

try:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], n=2)
    raise AssertionError("n=2 accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400

print("openai client: all checks passed")
