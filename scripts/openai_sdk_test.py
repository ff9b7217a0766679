"""Drives a running `oracle serve` with the official OpenAI Python SDK.

    python scripts/openai_sdk_test.py http://127.0.0.1:8080/v1

Streams a chat completion and a completion, checks each against the same
request unstreamed, reads usage from the stream, and checks that errors arrive
as the SDK's typed exceptions. Exits non-zero on the first failure.
"""

import sys

import openai
from openai import OpenAI


def check(condition, message):
    if not condition:
        print(f"FAIL: {message}", file=sys.stderr)
        sys.exit(1)


def main():
    base_url = sys.argv[1]
    client = OpenAI(base_url=base_url, api_key=sys.argv[2] if len(sys.argv) > 2 else "unused")

    models = client.models.list().data
    check(len(models) == 1, f"one model listed, got {models}")
    model = models[0].id

    messages = [{"role": "user", "content": "Write one sentence about the sea."}]
    whole = client.chat.completions.create(
        model=model, messages=messages, max_tokens=24, temperature=0, seed=1
    )
    whole_text = whole.choices[0].message.content
    check(whole_text, "the chat completion has text")
    check(whole.usage.completion_tokens > 0, "usage is reported")

    pieces, usage, finish = [], None, None
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=24,
        temperature=0,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            check(chunk.choices == [], "the usage chunk has no choices")
            usage = chunk.usage
            continue
        choice = chunk.choices[0]
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
    streamed = "".join(pieces)
    check(streamed == whole_text, f"streamed chat {streamed!r} == whole {whole_text!r}")
    check(len(pieces) > 1, "the chat streamed in several chunks")
    check(finish == whole.choices[0].finish_reason, f"finish_reason {finish}")
    check(usage is not None and usage.total_tokens == whole.usage.total_tokens, f"stream usage {usage}")

    prompt = "def fibonacci(n):"
    whole = client.completions.create(model=model, prompt=prompt, max_tokens=24, temperature=0)
    pieces = [
        c.choices[0].text
        for c in client.completions.create(
            model=model, prompt=prompt, max_tokens=24, temperature=0, stream=True
        )
        if c.choices
    ]
    streamed = "".join(pieces)
    check(streamed == whole.choices[0].text, f"streamed completion {streamed!r}")
    check(len(streamed) > 0, "the completion has text")

    try:
        client.chat.completions.create(model="no-such-model", messages=messages, max_tokens=2)
        check(False, "an unknown model is refused")
    except openai.NotFoundError as e:
        check(e.body.get("code") == "model_not_found", f"error body {e.body}")
    try:
        client.chat.completions.create(model=model, messages=messages, n=2)
        check(False, "n=2 is refused")
    except openai.BadRequestError as e:
        check(e.body.get("param") == "n", f"error body {e.body}")

    print(f"openai {openai.__version__}: chat and completion streamed from {model}; "
          f"{usage.completion_tokens} chat tokens; errors typed")


if __name__ == "__main__":
    main()
