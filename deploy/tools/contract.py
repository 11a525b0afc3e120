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
    "EMBEDFLEET_NATS_TOKEN",
    "EMBEDFLEET_NATS_NKEY",
    "EMBEDFLEET_NATS_TLS",
    "EMBEDFLEET_NATS_CA",
    "EMBEDFLEET_NATS_CLIENT_CERT",
    "EMBEDFLEET_NATS_CLIENT_KEY",
    "EMBEDFLEET_STORE",
    "EMBEDFLEET_S3_ENDPOINT",
    "EMBEDFLEET_S3_REGION",
    "EMBEDFLEET_S3_CA",
    "EMBEDFLEET_METRICS_ADDR",
    "EMBEDFLEET_LOG_FORMAT",
    "EMBEDFLEET_MAX_TASK_SECONDS",
}

ROLE_ENV = {
    "coordinator": {
        "EMBEDFLEET_TASKS_IN_FLIGHT",
        "EMBEDFLEET_EVENTS_IN_HAND",
        "EMBEDFLEET_INGESTS",
        "EMBEDFLEET_STREAM_REPLICAS",
        "EMBEDFLEET_STREAM_MAX_BYTES",
        "EMBEDFLEET_DEFAULT_MAX_COST_USD",
        "EMBEDFLEET_ALLOWED_MODEL_SOURCES",
    },
    # EMBEDFLEET_LLM_TPM: the --llm-tpm flag, by the convention that every flag has a variable.
    "generator": {
        "EMBEDFLEET_LLM_BASE_URL",
        "EMBEDFLEET_LLM_MODEL",
        "EMBEDFLEET_LLM_RPM",
        "EMBEDFLEET_LLM_TPM",
        "EMBEDFLEET_LLM_CONCURRENCY",
    },
    "trainer": {"EMBEDFLEET_DEVICE", "EMBEDFLEET_PRECISION", "EMBEDFLEET_ALLOWED_MODEL_SOURCES"},
    "evaluator": {"EMBEDFLEET_DEVICE", "EMBEDFLEET_PRECISION"},
}

# Variables that are not flags: the image entrypoint's role, credentials read by libraries.
OTHER_ENV = {"ROLE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "OPENAI_API_KEY"}

# The CLI (`embedfleet`) talks to NATS and the store like a worker, and encodes/evaluates locally;
# its global --log-format is EMBEDFLEET_LOG_FORMAT too.
CLI_ENV = (COMMON_ENV - {"EMBEDFLEET_METRICS_ADDR", "EMBEDFLEET_MAX_TASK_SECONDS"}) | {
    "EMBEDFLEET_DEVICE",
    "EMBEDFLEET_PRECISION",
}


def allowed_env(role: str) -> set[str]:
    """EMBEDFLEET_* variables a container of this role may set."""
    if role == "cli":
        return CLI_ENV
    return COMMON_ENV | ROLE_ENV[role]
