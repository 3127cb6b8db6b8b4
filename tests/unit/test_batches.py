from webapp.sync.jobs import batch_size


def test_a_run_is_split_in_batches_that_suit_each_psas_reads(app):
    assert batch_size("connectwise", 1000) == 20  # per-agreement reads: small batches spread the run
    assert batch_size("autotask", 1000) == 50  # 500 contracts per query: fewer, larger batches
    # Kaseya BMS reads tenant-wide: one batch per write allowed in flight, whatever the run's size.
    assert batch_size("kaseya_bms", 1000) == 334 and batch_size("kaseya_bms", 2) == 1


def test_an_operator_can_set_the_batch_size(app):
    app.config["SYNC_BATCH_SIZE"] = 7
    assert batch_size("kaseya_bms", 1000) == batch_size("connectwise", 1000) == 7
