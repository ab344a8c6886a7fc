"""Drives the official openai and anthropic Python SDKs against a gateway whose key
store is away, then back.

Run by tests/gateway_outage.rs with the interpreter of one virtualenv made by
scripts/sdk-env. Reads GATEWAY_URL and GATEWAY_KEYS (a JSON object: openai,
anthropic; keys the gateway has never been shown). One step per run, named by
the arguments:

  outage openai      one chat completion must fail with the SDK's 503 error
  outage anthropic   one message must fail with the SDK's 503 error
  restored           both keys must work again within 10 seconds

Both outage steps use `max_retries=2`; the test counts the attempts in the
gateway's request log, since only the server sees each retry. Prints one line per
check and exits non-zero on the first failure.
"""

import json
import os
import sys
import time

import anthropic
import openai

BASE = os.environ["GATEWAY_URL"]
KEYS = json.loads(os.environ["GATEWAY_KEYS"])
OPENAI_MODEL = "deepseek/deepseek-v4-pro"
ANTHROPIC_MODEL = "anthropic/claude-sonnet-4.6"
RETRIES = 2
# How long the key store may take to be used again once it is back.
RECOVERY = 10.0


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def say(text):
    print(f"  ok: {text}", flush=True)


def openai_chat(retries):
    client = openai.OpenAI(api_key=KEYS["openai"], base_url=f"{BASE}/v1", max_retries=retries)
    messages = [{"role": "user", "content": "Hello from openai"}]
    return client.chat.completions.create(model=OPENAI_MODEL, messages=messages)


def anthropic_message(retries):
    client = anthropic.Anthropic(api_key=KEYS["anthropic"], base_url=BASE, max_retries=retries)
    messages = [{"role": "user", "content": "Hello from anthropic"}]
    return client.messages.create(model=ANTHROPIC_MODEL, max_tokens=64, messages=messages)


def check_unavailable_headers(error, header_name):
    """What every 503 carries: a one-second retry hint, no Bearer challenge, and
    the request id the SDK reports."""
    headers = error.response.headers
    check(headers.get("retry-after") == "1", f"retry-after {headers.get('retry-after')!r}")
    check("www-authenticate" not in headers, "a 503 carried a challenge")
    check(error.request_id and error.request_id == headers.get(header_name), error.request_id)


def openai_outage():
    try:
        openai_chat(RETRIES)
        raise AssertionError("openai was served while the key store is away")
    except openai.InternalServerError as error:
        check(isinstance(error, openai.APIStatusError), type(error).__mro__)
        check(error.status_code == 503, error.status_code)
        check(error.code == "auth_service_unavailable", f"code {error.code!r}")
        check(error.type == "server_error", f"type {error.type!r}")
        check_unavailable_headers(error, "x-request-id")
    say(f"openai {openai.__version__}: InternalServerError 503 auth_service_unavailable")


def anthropic_outage():
    try:
        anthropic_message(RETRIES)
        raise AssertionError("anthropic was served while the key store is away")
    except anthropic.InternalServerError as error:
        check(isinstance(error, anthropic.APIStatusError), type(error).__mro__)
        check(error.status_code == 503, error.status_code)
        body = error.body
        check(body["type"] == "error", body)
        check(body["error"]["type"] == "api_error", body)
        check(body["error"]["code"] == "auth_service_unavailable", body)
        check(body["error"]["details"]["error_code"] == "auth_service_unavailable", body)
        check_unavailable_headers(error, "request-id")
        check(body["request_id"] == error.request_id, (body["request_id"], error.request_id))
    say(f"anthropic {anthropic.__version__}: InternalServerError 503 auth_service_unavailable")


def eventually(what, call, unavailable):
    """Calls `call` without retries until it succeeds; a 503 means the store is not
    back yet, anything else fails at once."""
    deadline = time.monotonic() + RECOVERY
    while True:
        try:
            return call(0)
        except unavailable:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still 503 after {RECOVERY} s") from None
            time.sleep(0.1)


def restored():
    reply = eventually("openai", openai_chat, openai.InternalServerError)
    check(reply.choices[0].message.content == "Hello from openai", reply)
    say(f"openai {openai.__version__}: the key works once the key store is back")

    reply = eventually("anthropic", anthropic_message, anthropic.InternalServerError)
    check(reply.content[0].text == "Hello from anthropic", reply)
    say(f"anthropic {anthropic.__version__}: the key works once the key store is back")


STEPS = {
    ("outage", "openai"): openai_outage,
    ("outage", "anthropic"): anthropic_outage,
    ("restored",): restored,
}


def main():
    step = STEPS.get(tuple(sys.argv[1:]))
    if step is None:
        raise SystemExit(f"usage: {sys.argv[0]} outage openai|outage anthropic|restored")
    step()


if __name__ == "__main__":
    try:
        main()
    except AssertionError as error:
        print(f"FAILED: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
    except Exception as error:  # noqa: BLE001 - report any failure as one line
        print(f"FAILED: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
