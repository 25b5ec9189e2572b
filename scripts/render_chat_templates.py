"""Renders chat templates the way Hugging Face `transformers` renders them, for the frontend's
template corpus test: the same Jinja environment (`ImmutableSandboxedEnvironment` with
trim_blocks and lstrip_blocks, loop controls, a `{% generation %}` tag that renders its body,
`tojson` as `json.dumps` with its keyword arguments, `raise_exception`, `strftime_now`) and the
same handling of `continue_final_message`.

Usage: render_chat_templates.py TEMPLATE_DIR CASES_JSON > expected.json
Writes {template file name: {"compile_error": str} | {case name: {"out": str} | {"err": str}}}.
"""

import json
import os
import sys
from datetime import datetime

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment


class GenerationTag(jinja2.ext.Extension):
    """`{% generation %}…{% endgeneration %}`: transformers marks assistant text with it and
    renders the body unchanged."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(format):
    return datetime.now().strftime(format)


def environment():
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def render(template, source, case):
    """One case, as transformers' `render_jinja_template` renders it."""
    messages = json.loads(json.dumps(case["messages"]))
    cont = case.get("continue_final_message", False)
    if cont:
        final = messages[-1].get("content")
        if final is None or "content" not in source:
            raise ValueError("continue_final_message: the final message has no content")
        messages[-1]["content"] = final + CONTINUE_TAG
    kwargs = dict(case.get("kwargs", {}))
    kwargs.setdefault("bos_token", "<s>")
    kwargs.setdefault("eos_token", "</s>")
    out = template.render(
        messages=messages,
        tools=case.get("tools"),
        documents=case.get("documents"),
        add_generation_prompt=case.get("add_generation_prompt", True),
        **kwargs,
    )
    if cont:
        if final.strip() not in out or CONTINUE_TAG.strip() not in out:
            raise ValueError("continue_final_message: the final message is not in the rendered chat")
        at = out.rindex(CONTINUE_TAG.strip())
        out = out[:at] if out[at : at + len(CONTINUE_TAG)] == CONTINUE_TAG else out[:at].rstrip()
    return out


def main():
    template_dir, cases_path = sys.argv[1], sys.argv[2]
    with open(cases_path, encoding="utf-8") as f:
        cases = json.load(f)
    env = environment()
    results = {}
    for name in sorted(os.listdir(template_dir)):
        if not name.endswith(".jinja"):
            continue
        with open(os.path.join(template_dir, name), encoding="utf-8") as f:
            source = f.read()
        try:
            template = env.from_string(source)
        except Exception as e:  # noqa: BLE001 - any compile failure is a result
            results[name] = {"compile_error": f"{type(e).__name__}: {e}"}
            continue
        per_case = {}
        for case in cases:
            try:
                per_case[case["name"]] = {"out": render(template, source, case)}
            except Exception as e:  # noqa: BLE001 - any render failure is a result
                per_case[case["name"]] = {"err": f"{type(e).__name__}: {e}"}
        results[name] = per_case
    json.dump(results, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
