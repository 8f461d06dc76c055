"""Hypothesis profiles of the fuzz tests (tests/test_fuzz.py).

`fuzz` (the default): a few hundred cases a test, to keep `make test` fast. `faults` (`make faults`,
`pytest --hypothesis-profile=faults`): at least 10,000 cases. Registered when the tests package
is imported, before the hypothesis plugin reads `--hypothesis-profile`.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

FUZZ_PROFILE = "fuzz"
FAULTS_PROFILE = "faults"

settings.register_profile(
    FUZZ_PROFILE,
    max_examples=300,
    # Every case is a real HTTP round trip to a receiver on Redis, served once per test.
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
    print_blob=True,
)
settings.register_profile(
    FAULTS_PROFILE, parent=settings.get_profile(FUZZ_PROFILE), max_examples=10_000
)


def fuzz_settings(share: float = 1.0) -> settings:
    """The `faults` profile when it is the one loaded, else `fuzz` (never hypothesis's default),
    with `share` of its cases: the callback body, the deepest input, gets them all."""
    loaded = settings.get_current_profile_name()
    profile = settings.get_profile(FAULTS_PROFILE if loaded == FAULTS_PROFILE else FUZZ_PROFILE)
    return settings(profile, max_examples=max(50, int(profile.max_examples * share)))
