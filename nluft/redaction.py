"""Secrets never leave the process: one redaction for every file, log and W&B record nluft writes.

A secret is recognised by the name it stands under (`hf_token:`, `WANDB_API_KEY=`, `--password x`)
and by its shape wherever it stands: a password in a URL (`https://user:TOKEN@host`), a token
with a known prefix (Hugging Face `hf_`, GitHub `ghp_`, GitLab `glpat-`, Slack `xox?-`, AWS `AKIA`,
OpenAI-style `sk-`), a W&B API key (`local-<40+ hex>`, or 40+ characters after a secret-looking
name) and a bearer token. A bare 40-character hex string is not redacted on its own: it is
indistinguishable from a git commit (`model.revision`, the run's `git_commit`).

Used by: config.yaml (config.to_yaml), the W&B config, run name, group, tags and recorded command
line (tracking), `nluft launch`'s printed torchrun command, and `nluft submit`, which keeps a
setup line or override that holds a secret out of job.sbatch altogether (launch/slurm.py).
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "<redacted>"

# A key or variable name that says its value is a secret, whatever section it appears in.
SECRET_NAME = re.compile(
    r"(?:^|[_.-])(api_?key|auth|authorization|token|secret|password|passwd|credentials?|"
    r"private_?key|access_?key)(?:$|[_.-])",
    re.IGNORECASE,
)
# Shapes that are secrets wherever they appear.
TOKEN_SHAPES = re.compile(
    r"""
      \bhf_[A-Za-z0-9]{20,}                   # Hugging Face user access token
    | \bapi_org_[A-Za-z0-9]{20,}              # Hugging Face organisation token
    | \bgh[pousr]_[A-Za-z0-9]{20,}            # GitHub tokens
    | \bgithub_pat_[A-Za-z0-9_]{20,}
    | \bglpat-[A-Za-z0-9_-]{20,}              # GitLab
    | \bxox[abposr]-[A-Za-z0-9-]{10,}         # Slack
    | \bAKIA[0-9A-Z]{16}\b                    # AWS access key id
    | \bsk-[A-Za-z0-9_-]{20,}                 # OpenAI-style secret keys
    | \blocal-[0-9a-f]{40,}\b                 # W&B server (on-prem) API key
    """,
    re.VERBOSE,
)
# scheme://user:password@host -> the password; scheme://LONGTOKEN@host -> the token.
URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]*:)[^\s/@]+(?=@)")
URL_TOKEN_USER = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://)[A-Za-z0-9_-]{20,}(?=@)")
# NAME=value, NAME: value, --name value, where NAME looks secret; the value may be quoted.
# (A bare space separates only an option from its value: "token classification" is no secret.)
ASSIGNMENT = re.compile(
    r"""(?P<head>(?:(?P<name>[A-Za-z_][\w.-]*)["']?\s*[=:]\s*|(?P<flag>--?[A-Za-z][\w-]*)\s+))
        (?P<value>"[^"]*"|'[^']*'|[^\s"';&|]+)""",
    re.VERBOSE,
)
BEARER = re.compile(r"(?P<head>\b(?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)
WANDB_LOGIN = re.compile(r"(?P<head>\bwandb\s+login(?:\s+--?[\w-]+)*\s+)(?P<value>[\w-]{40,})")


def redact_text(text: str) -> str:
    """`text` with every secret it holds replaced by `<redacted>`; other text unchanged."""
    text = TOKEN_SHAPES.sub(REDACTED, text)
    text = URL_PASSWORD.sub(rf"\g<head>{REDACTED}", text)
    text = URL_TOKEN_USER.sub(rf"\g<head>{REDACTED}", text)
    text = BEARER.sub(rf"\g<head>{REDACTED}", text)
    text = WANDB_LOGIN.sub(rf"\g<head>{REDACTED}", text)
    return ASSIGNMENT.sub(redact_assignment, text)


def redact_assignment(match: re.Match[str]) -> str:
    name, value = match["name"] or match["flag"].lstrip("-"), match["value"]
    if not SECRET_NAME.search(name) or REDACTED in value:
        return match[0]
    quote = value[0] if value[:1] in "\"'" else ""
    return f"{match['head']}{quote}{REDACTED}{quote}"


def has_secret(text: str) -> bool:
    return redact_text(text) != text


def redact(value: Any) -> Any:
    """A copy of a config-like value: secret-named keys and secret-shaped strings replaced."""
    if isinstance(value, dict):
        return {
            k: REDACTED if isinstance(k, str) and SECRET_NAME.search(k) else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str):
        return redact_text(value)
    return value
