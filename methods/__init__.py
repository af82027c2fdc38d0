"""Built-in method plugins: one module per method, each defining a `harness.contract.Method` subclass."""
