"""Drives the official openai and anthropic Python SDKs against a running gateway.

Run by tests/gateway_sdk.rs with the interpreter of one virtualenv made by
scripts/sdk-env. Reads GATEWAY_URL and GATEWAY_KEYS (a JSON object: active,
disabled, revoked, deleted, user_disabled). Prints one line per check and exits
non-zero on the first failure.
"""

import json
import os
import sys

import anthropic
import openai

BASE = os.environ["GATEWAY_URL"]
KEYS = json.loads(os.environ["GATEWAY_KEYS"])
OPENAI_MODEL = "deepseek/deepseek-v4-pro"
ANTHROPIC_MODEL = "anthropic/claude-sonnet-4.6"
MAJOR = {
    "openai": int(openai.__version__.split(".")[0]),
    "anthropic": int(anthropic.__version__.split(".")[0]),
}

# Every bad key, and the code the gateway answers it with.
BAD_KEYS = [
    ("malformed", "cm-abc", "invalid_api_key"),
    ("wrong", "sk-proj-0123456789abcdef", "invalid_api_key"),
    ("mistyped", KEYS["active"][:-1] + ("A" if KEYS["active"][-1] != "A" else "B"), "invalid_api_key"),
    ("disabled", KEYS["disabled"], "api_key_inactive"),
    ("revoked", KEYS["revoked"], "api_key_inactive"),
    ("deleted", KEYS["deleted"], "invalid_api_key"),
    ("user disabled", KEYS["user_disabled"], "user_inactive"),
]


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def say(text):
    print(f"  ok: {text}", flush=True)


# ---------------------------------------------------------------- openai


def openai_client(key, **options):
    return openai.OpenAI(api_key=key, base_url=f"{BASE}/v1", max_retries=0, **options)


def openai_works():
    client = openai_client(KEYS["active"])
    messages = [{"role": "user", "content": "Hello from openai"}]

    reply = client.chat.completions.create(model=OPENAI_MODEL, messages=messages)
    check(reply.choices[0].message.content == "Hello from openai", reply)
    check(reply.usage.completion_tokens == 3, reply.usage)
    say("openai chat completion")

    stream = client.chat.completions.create(
        model=OPENAI_MODEL,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check(text == "Hello from openai", text)
    check(chunks[-1].usage.total_tokens == 6, chunks[-1])
    say("openai streamed chat completion")

    ids = [model.id for model in client.models.list()]
    check(ids == [OPENAI_MODEL, ANTHROPIC_MODEL], ids)
    check(client.models.retrieve(ANTHROPIC_MODEL).owned_by == "anthropic", "retrieve")
    say("openai model listing")

    try:
        client.chat.completions.create(model="acme/none", messages=messages)
        raise AssertionError("an unknown model was served")
    except openai.NotFoundError as error:
        check(error.code == "model_not_found", error.code)
    say("openai unknown model is NotFoundError")


def openai_refuses(name, key, code, headers=None):
    client = openai_client(key, default_headers=headers or {})
    try:
        client.models.list()
        raise AssertionError(f"openai accepted the {name} key")
    except openai.AuthenticationError as error:
        check(error.status_code == 401, error.status_code)
        check(error.code == code, f"{name}: code {error.code!r}, expected {code!r}")
        check(error.type == "authentication_error", error.type)
        header = error.response.headers.get("x-request-id")
        check(error.request_id and error.request_id == header, (error.request_id, header))
        check(error.response.headers.get("request-id") == header, "request-id differs")
    say(f"openai: {name} key is AuthenticationError {code}")


def openai_missing_key():
    # The SDK insists on a key, so blank the header it would carry it in: an empty
    # header counts as no header.
    openai_refuses("missing", "unused", "missing_api_key", {"Authorization": ""})


def openai_request_id_is_kept():
    client = openai_client("cm-abc", default_headers={"x-request-id": "trace-42"})
    try:
        client.models.list()
        raise AssertionError("accepted")
    except openai.AuthenticationError as error:
        check(error.request_id == "trace-42", error.request_id)
    say("openai: the client's x-request-id comes back")


# ------------------------------------------------------------- anthropic


def anthropic_client(key=None, headers=None):
    return anthropic.Anthropic(
        api_key=key,
        base_url=BASE,
        max_retries=0,
        default_headers=headers or {},
    )


def anthropic_x_api_key_client(key):
    """A client that sends the key as `x-api-key` only.

    anthropic 1.x does so by default; 2.x sends `Authorization: Bearer`, so the
    key goes in a default header instead.
    """
    if MAJOR["anthropic"] >= 2:
        return anthropic_client(headers={"x-api-key": key})
    return anthropic_client(key)


def anthropic_sends_the_documented_headers():
    """anthropic 2.x sends `Authorization: Bearer` and version 2026-10-21; 1.x sends
    `x-api-key` and 2023-06-01. The gateway must accept both."""
    client = anthropic_client(KEYS["active"])
    raw = client.messages.with_raw_response.create(
        model=ANTHROPIC_MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}]
    )
    sent = raw.http_request.headers
    if MAJOR["anthropic"] >= 2:
        check(sent.get("authorization") == f"Bearer {KEYS['active']}", "no Bearer header")
        check("x-api-key" not in sent, "2.x sent x-api-key")
        check(sent.get("anthropic-version") == "2026-10-21", sent.get("anthropic-version"))
    else:
        check(sent.get("x-api-key") == KEYS["active"], "no x-api-key header")
        check("authorization" not in sent, "1.x sent Authorization")
        check(sent.get("anthropic-version") == "2023-06-01", sent.get("anthropic-version"))
    check(raw.headers.get("request-id", "").startswith("req_"), "no request-id on success")
    say(f"anthropic {anthropic.__version__} sends the documented headers")


def anthropic_works(client, how):
    messages = [{"role": "user", "content": "Hello from anthropic"}]

    reply = client.messages.create(model=ANTHROPIC_MODEL, max_tokens=64, messages=messages)
    check(reply.content[0].text == "Hello from anthropic", reply)
    check(reply.stop_reason == "end_turn", reply.stop_reason)
    say(f"anthropic message ({how})")

    with client.messages.stream(
        model=ANTHROPIC_MODEL, max_tokens=64, messages=messages
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    check(text == "Hello from anthropic", text)
    check(final.usage.output_tokens == 3, final.usage)
    say(f"anthropic streamed message ({how})")

    ids = [model.id for model in client.models.list()]
    check(ids == [OPENAI_MODEL, ANTHROPIC_MODEL], ids)
    check(
        client.models.retrieve(ANTHROPIC_MODEL).display_name == "Claude Sonnet 4.6",
        "retrieve",
    )
    say(f"anthropic model listing ({how})")


def anthropic_refuses(name, client, code, how):
    try:
        client.models.list()
        raise AssertionError(f"anthropic accepted the {name} key")
    except anthropic.AuthenticationError as error:
        check(error.status_code == 401, error.status_code)
        body = error.body
        check(body["error"]["code"] == code, f"{name}: {body}")
        check(body["error"]["details"]["error_code"] == code, body)
        if MAJOR["anthropic"] >= 2:
            check(error.error_code == code, f"{name}: error_code {error.error_code!r}")
        header = error.response.headers.get("request-id")
        check(error.request_id and error.request_id == header, (error.request_id, header))
        check(body["request_id"] == header, (body["request_id"], header))
    say(f"anthropic: {name} key is AuthenticationError {code} ({how})")


def anthropic_missing_key():
    # No key and the Authorization header explicitly left out: nothing is sent.
    client = anthropic_client(headers={"Authorization": anthropic.Omit()})
    anthropic_refuses("missing", client, "missing_api_key", "no header")


def main():
    print(f"openai {openai.__version__}, anthropic {anthropic.__version__}", flush=True)

    openai_works()
    openai_missing_key()
    for name, key, code in BAD_KEYS:
        openai_refuses(name, key, code)
    openai_request_id_is_kept()

    anthropic_sends_the_documented_headers()
    default_how = "Authorization: Bearer" if MAJOR["anthropic"] >= 2 else "x-api-key"
    anthropic_works(anthropic_client(KEYS["active"]), default_how)
    anthropic_works(anthropic_x_api_key_client(KEYS["active"]), "x-api-key")
    anthropic_missing_key()
    for name, key, code in BAD_KEYS:
        anthropic_refuses(name, anthropic_client(key), code, default_how)
        anthropic_refuses(name, anthropic_x_api_key_client(key), code, "x-api-key")

    print("all checks passed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # noqa: BLE001 - report any failure as one line
        print(f"FAILED: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
