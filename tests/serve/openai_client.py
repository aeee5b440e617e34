"""The real `openai` client against `smelt serve`: python openai_client.py BASE_URL MODEL.

Each check raises on a wrong answer; the last line says all passed.
"""
import sys

import openai

base_url, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key="unused")
print(f"openai {openai.__version__} against {base_url}")

chat = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Hello!"}], max_tokens=8, temperature=0
)
assert chat.choices[0].finish_reason == "length", chat
assert chat.usage.completion_tokens == 8, chat.usage
print("chat:", repr(chat.choices[0].message.content))

done = client.completions.create(model=model, prompt="Once upon a time", max_tokens=10, temperature=0)
text = done.choices[0].text
assert done.usage.completion_tokens == 10, done.usage
print("completion:", repr(text))

pieces, usage = [], None
stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Hello!"}],
    max_tokens=8,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        pieces.append(choice.delta.content or "")
assert "".join(pieces) == chat.choices[0].message.content, (pieces, chat)
assert usage is not None and usage.completion_tokens == 8, usage
print("chat stream: same text, usage", usage.completion_tokens)

streamed = "".join(
    c.choices[0].text
    for c in client.completions.create(model=model, prompt="Once upon a time", max_tokens=10, temperature=0, stream=True)
    if c.choices
)
assert streamed == text, (streamed, text)

stop = text[len(text) // 2 : len(text) // 2 + 2]
stopped = client.completions.create(model=model, prompt="Once upon a time", max_tokens=10, temperature=0, stop=[stop])
assert stopped.choices[0].text == text[: text.index(stop)], (stopped, stop)
assert stopped.choices[0].finish_reason == "stop"
print("stop:", repr(stop), "->", repr(stopped.choices[0].text))

many = client.completions.create(model=model, prompt="Hi", max_tokens=6, n=3, seed=11, temperature=1.0)
again = client.completions.create(model=model, prompt="Hi", max_tokens=6, n=3, seed=11, temperature=1.0)
assert len(many.choices) == 3
assert [c.text for c in many.choices] == [c.text for c in again.choices], "same seed, same text"
print("n=3 seed=11:", [c.text for c in many.choices])

probs = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0, logprobs=True, top_logprobs=2
)
content = probs.choices[0].logprobs.content
assert len(content) == 3 and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content), content
print("logprobs:", [(t.token, round(t.logprob, 3)) for t in content])

try:
    client.chat.completions.create(model=model, messages=[{"role": "robot", "content": "Hi"}], max_tokens=2)
    raise AssertionError("an unknown role was accepted")
except openai.BadRequestError as e:
    assert e.body["param"] == "messages[0].role", e.body
print("models:", [m.id for m in client.models.list()])
print("openai client: all checks passed")
