"""pytest settings shared by the whole repository (the unit tests in tests/ and nbval over chapters/)."""


def pytest_collection_modifyitems(items):
    # nbval waits only 5 s for a cell's outputs once the kernel has replied. With two notebooks
    # training at once on a 2-core machine, a cell's last messages (progress-bar updates, a
    # figure) can lag longer than that, and nbval then fails a cell that ran fine.
    for item in items:
        if hasattr(item, "output_timeout"):
            item.output_timeout = 60
