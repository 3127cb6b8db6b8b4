pytest_plugins = ["tests.fixtures.psa_sim", "tests.fixtures.redis"]
