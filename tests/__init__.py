import os

# Never let the Alibaba Cloud credential chain probe the ECS metadata address (off this machine)
# from a test run. The credentials package reads this once, when imported: hence here, first.
os.environ["ALIBABA_CLOUD_ECS_METADATA_DISABLED"] = "true"

# Hypothesis profiles must exist before its pytest plugin loads `--hypothesis-profile=faults`.
from tests import fuzz_profiles  # noqa: F401
