"""Records which calls of an external_ops entry point ran an op, where a layer module imported it."""


class CallCounter:
    """Wraps `module.name` (monkeypatched): `runs` holds, per call, whether it ran an op (a result, not None)."""

    def __init__(self, monkeypatch, module, name):
        self.runs = []
        original = getattr(module, name)

        def counted(*args, **kwargs):
            result = original(*args, **kwargs)
            self.runs.append(result is not None)
            return result

        monkeypatch.setattr(module, name, counted)

    @property
    def calls(self) -> int:
        return len(self.runs)

    @property
    def ran(self) -> int:
        return sum(self.runs)
