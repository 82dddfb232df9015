"""Drives Warden's AI gateway with the official OpenAI, Anthropic and Google GenAI Python
SDKs (and their token counting) and prints one JSON object of observations for the Rust test that runs it
(tests/it/ai/sdks.rs).

    python ai_sdks.py BASE_URL TOKEN

Warden routes `sonnet` to an Anthropic-format provider, `gpt` to an OpenAI-format one
and `flash` to a Gemini one (stand-ins on loopback), so each SDK reads both what Warden
relays and what it translates. The SDKs' own stream helpers (`responses.stream`, `messages.stream`) check
the order and shape of the events as they accumulate them: a malformed stream raises.
Every request has a deadline; an exception is reported with its type and message.
"""

import json
import sys
import traceback

import anthropic
import openai
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

DEADLINE = 30

WEATHER_TOOL = {
    "type": "function",
    "name": "weather",
    "description": "Weather by city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def observe(report, name, scenario):
    try:
        report[name] = scenario()
    except Exception as error:  # reported, not raised: the test names what failed
        report[name] = {
            "raised": type(error).__name__,
            "message": str(error),
            "trace": traceback.format_exc(limit=3),
        }


def openai_scenarios(client, report):
    def chat(model):
        def run():
            answer = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Hi"}]
            )
            return {
                "text": answer.choices[0].message.content,
                "prompt_tokens": answer.usage.prompt_tokens,
            }

        return run

    def chat_stream():
        text, usage = [], None
        stream = client.chat.completions.create(
            model="sonnet",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text.append(chunk.choices[0].delta.content)
            if chunk.usage:
                usage = chunk.usage.completion_tokens
        return {"text": "".join(text), "completion_tokens": usage}

    def responses_create(model):
        def run():
            answer = client.responses.create(model=model, input="Hi")
            return {
                "status": answer.status,
                "text": answer.output_text,
                "input_tokens": answer.usage.input_tokens,
                "output_tokens": answer.usage.output_tokens,
            }

        return run

    def responses_stream(model, tools=None):
        def run():
            deltas, names = [], []
            arguments = {"tools": tools} if tools else {}
            with client.responses.stream(model=model, input="Hi", **arguments) as stream:
                for event in stream:
                    names.append(event.type)
                    if event.type == "response.output_text.delta":
                        deltas.append(event.delta)
                final = stream.get_final_response()
            calls = [
                {"name": item.name, "call_id": item.call_id, "arguments": json.loads(item.arguments)}
                for item in final.output
                if item.type == "function_call"
            ]
            return {
                "deltas": "".join(deltas),
                "final_text": final.output_text,
                "status": final.status,
                "first": names[0] if names else None,
                "last": names[-1] if names else None,
                "output_tokens": final.usage.output_tokens if final.usage else None,
                "calls": calls,
            }

        return run

    def input_tokens(model):
        def run():
            counted = client.responses.input_tokens.count(model=model, input="Hi")
            return {"object": counted.object, "input_tokens": counted.input_tokens}

        return run

    def unknown_model():
        try:
            client.responses.create(model="no-such-model", input="Hi")
        except openai.NotFoundError as error:
            return {"raised": "NotFoundError", "message": error.message}
        return {"raised": None}

    observe(report, "openai_chat_translated", chat("sonnet"))
    observe(report, "openai_chat_relayed", chat("gpt"))
    observe(report, "openai_chat_stream_translated", chat_stream)
    observe(report, "responses_create_translated", responses_create("sonnet"))
    observe(report, "responses_create_relayed", responses_create("gpt"))
    observe(report, "responses_stream_translated", responses_stream("sonnet"))
    observe(report, "responses_stream_relayed", responses_stream("gpt"))
    observe(report, "responses_stream_tool_translated", responses_stream("sonnet", [WEATHER_TOOL]))
    observe(report, "responses_input_tokens_relayed", input_tokens("gpt"))
    observe(report, "responses_input_tokens_translated", input_tokens("sonnet"))
    observe(report, "openai_unknown_model", unknown_model)
    observe(report, "openai_models", lambda: {
        "list": [m.id for m in client.models.list()],
        "retrieved": client.models.retrieve("gpt").id,
    })


def anthropic_scenarios(client, report):
    def create(model):
        def run():
            answer = client.messages.create(
                model=model, max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
            )
            return {
                "text": "".join(b.text for b in answer.content if b.type == "text"),
                "stop_reason": answer.stop_reason,
                "output_tokens": answer.usage.output_tokens,
            }

        return run

    def stream(model):
        def run():
            with client.messages.stream(
                model=model, max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
            ) as events:
                text = "".join(events.text_stream)
                final = events.get_final_message()
            return {
                "text": text,
                "final_text": "".join(b.text for b in final.content if b.type == "text"),
                "output_tokens": final.usage.output_tokens,
            }

        return run

    def unknown_model():
        try:
            client.messages.create(
                model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
            )
        except anthropic.NotFoundError as error:
            return {"raised": "NotFoundError", "message": error.message}
        return {"raised": None}

    observe(report, "anthropic_create_relayed", create("sonnet"))
    observe(report, "anthropic_create_translated", create("gpt"))
    observe(report, "anthropic_stream_relayed", stream("sonnet"))
    observe(report, "anthropic_stream_translated", stream("gpt"))
    observe(report, "anthropic_unknown_model", unknown_model)

    def count(model):
        def run():
            try:
                counted = client.messages.count_tokens(
                    model=model, messages=[{"role": "user", "content": "Hi"}]
                )
            except anthropic.NotFoundError as error:
                return {"raised": "NotFoundError", "message": error.message}
            return {"input_tokens": counted.input_tokens}

        return run

    observe(report, "anthropic_count_relayed", count("sonnet"))
    observe(report, "anthropic_count_translated", count("flash"))
    observe(report, "anthropic_count_openai", count("gpt"))
    observe(report, "anthropic_models", lambda: {
        "list": [m.id for m in client.models.list()],
        "retrieved": client.models.retrieve("sonnet").id,
    })


def genai_scenarios(client, report):
    def create(model):
        def run():
            answer = client.models.generate_content(model=model, contents="Hi")
            return {
                "text": answer.text,
                "output_tokens": answer.usage_metadata.candidates_token_count,
            }

        return run

    def stream(model):
        def run():
            text, usage = [], None
            for chunk in client.models.generate_content_stream(model=model, contents="Hi"):
                if chunk.text:
                    text.append(chunk.text)
                if chunk.usage_metadata and chunk.usage_metadata.candidates_token_count:
                    usage = chunk.usage_metadata.candidates_token_count
            return {"text": "".join(text), "output_tokens": usage}

        return run

    def unknown_model():
        try:
            client.models.generate_content(model="no-such-model", contents="Hi")
        except genai_errors.ClientError as error:
            return {"raised": "ClientError", "code": error.code, "message": error.message}
        return {"raised": None}

    observe(report, "genai_create_relayed", create("flash"))
    observe(report, "genai_create_translated", create("sonnet"))
    observe(report, "genai_stream_relayed", stream("flash"))
    observe(report, "genai_stream_translated", stream("sonnet"))
    observe(report, "genai_unknown_model", unknown_model)

    def count(model):
        def run():
            counted = client.models.count_tokens(model=model, contents="Hi")
            return {"total_tokens": counted.total_tokens}

        return run

    observe(report, "genai_count_relayed", count("flash"))
    observe(report, "genai_count_translated", count("sonnet"))


def main():
    base_url, token = sys.argv[1], sys.argv[2]
    report = {"openai_version": openai.__version__, "anthropic_version": anthropic.__version__}
    openai_client = openai.OpenAI(
        base_url=f"{base_url}/v1", api_key=token, max_retries=0, timeout=DEADLINE
    )
    anthropic_client = anthropic.Anthropic(
        base_url=base_url, api_key=token, max_retries=0, timeout=DEADLINE
    )
    genai_client = genai.Client(
        api_key=token,
        http_options=genai_types.HttpOptions(
            base_url=base_url,
            timeout=DEADLINE * 1000,
            retry_options=genai_types.HttpRetryOptions(attempts=1),
        ),
    )
    openai_scenarios(openai_client, report)
    anthropic_scenarios(anthropic_client, report)
    genai_scenarios(genai_client, report)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
