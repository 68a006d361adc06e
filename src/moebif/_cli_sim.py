"""Commands `simulate`, `hysteresis` and `reproduce` (filled in by the router engine work)."""
