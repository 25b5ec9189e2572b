"""Schemathesis hooks for fuzzing a Switchyard frontend past model lookup: three bodies in four
name the served model (SWITCHYARD_FUZZ_MODEL, default switchyard-tiny), so templating,
tokenizing, dispatch and the response paths are exercised, not only the 404.
Use: SCHEMATHESIS_HOOKS=scripts.schemathesis_hooks schemathesis run URL/openapi.json ..."""

import os

import schemathesis

MODEL = os.environ.get("SWITCHYARD_FUZZ_MODEL", "switchyard-tiny")
_count = [0]


def _draw():
    _count[0] += 1
    return _count[0]


@schemathesis.hook
def map_body(ctx, body):
    if isinstance(body, dict) and ctx.operation is not None and _draw() % 4 != 0:
        body["model"] = MODEL
        # Keep generations short: the fuzzer's numbers run into the millions.
        for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            if isinstance(body.get(key), int) and body[key] > 64:
                body[key] = 64
    return body
