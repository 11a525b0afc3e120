"""The workers' configuration contract, as deploy/ and helm/ use it (shared by the check scripts).

Every flag of the worker binaries is also an EMBEDFLEET_* environment variable. These are the
ones the compose file and the chart may set, per binary; the Rust tests compare the compose file's
variables (deploy/compose_env_vars.txt) with each binary's --help.
"""

ROLES = ("coordinator", "generator", "trainer", "evaluator")

# Every worker: NATS, the store, metrics and logs.
COMMON_ENV = {
    "EMBEDFLEET_NATS_URL",
    "EMBEDFLEET_NATS_CREDS",
    "EMBEDFLEET_NATS_USER",
    "EMBEDFLEET_NATS_PASSWORD",
    "EMBEDFLEET_NATS_TLS",
    "EMBEDFLEET_STORE",
    "EMBEDFLEET_S3_ENDPOINT",
    "EMBEDFLEET_S3_REGION",
    "EMBEDFLEET_METRICS_ADDR",
    "EMBEDFLEET_LOG_FORMAT",
}

ROLE_ENV = {
    "coordinator": set(),
    # EMBEDFLEET_LLM_TPM: the --llm-tpm flag, by the convention that every flag has a variable.
    "generator": {
        "EMBEDFLEET_LLM_BASE_URL",
        "EMBEDFLEET_LLM_MODEL",
        "EMBEDFLEET_LLM_RPM",
        "EMBEDFLEET_LLM_TPM",
        "EMBEDFLEET_LLM_CONCURRENCY",
    },
    "trainer": {"EMBEDFLEET_DEVICE", "EMBEDFLEET_PRECISION"},
    "evaluator": {"EMBEDFLEET_DEVICE", "EMBEDFLEET_PRECISION"},
}

# Variables that are not flags: the image entrypoint's role, credentials read by libraries.
OTHER_ENV = {"ROLE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "OPENAI_API_KEY"}

# The CLI (`embedfleet`) talks to NATS and the store like a worker, and encodes/evaluates locally;
# its global --log-format is EMBEDFLEET_LOG_FORMAT too.
CLI_ENV = (COMMON_ENV - {"EMBEDFLEET_METRICS_ADDR"}) | {
    "EMBEDFLEET_DEVICE",
    "EMBEDFLEET_PRECISION",
}


def allowed_env(role: str) -> set[str]:
    """EMBEDFLEET_* variables a container of this role may set."""
    if role == "cli":
        return CLI_ENV
    return COMMON_ENV | ROLE_ENV[role]
