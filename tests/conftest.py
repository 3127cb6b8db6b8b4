pytest_plugins = ["tests.fixtures.app", "tests.fixtures.psa_sim", "tests.fixtures.redis"]
