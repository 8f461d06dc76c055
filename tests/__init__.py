import os

# The suite runs on its own settings whatever the caller's shell holds (the README's exports, a
# key prefix, a token): every test passes the settings it means. Cleared here, first, because the
# Alibaba Cloud credentials package reads its variables once, when imported; and the credential
# chain must never probe the ECS metadata address (off this machine) from a test run.
for name in [n for n in os.environ if n.startswith(("VOD_WEBHOOK_", "ALIBABA_CLOUD_"))]:
    del os.environ[name]
os.environ["ALIBABA_CLOUD_ECS_METADATA_DISABLED"] = "true"

# Hypothesis profiles must exist before its pytest plugin loads `--hypothesis-profile=faults`.
from tests import fuzz_profiles  # noqa: E402, F401
