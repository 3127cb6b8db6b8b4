pytest_plugins = ["tests.fixtures.app", "tests.fixtures.psa_sim", "tests.fixtures.redis", "tests.fixtures.browser",
                  "tests.fixtures.oidc_provider", "tests.fixtures.workers", "tests.fixtures.integrations",
                  "tests.fixtures.alerts"]
