"""Tools of the project, not of the product: ``bench`` and ``torture``. Nothing in the
product imports them; their CLI commands import them when they run."""
